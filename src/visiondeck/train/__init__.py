"""Training: the Lightning system, its data, callbacks and the `train()` entry point.

This is the only package that imports Lightning. Networks stay plain `nn.Module`s from
`visiondeck.models`, so export and serving never depend on it.
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

_LAZY = {
    "train": "visiondeck.train.runner",
    "resume": "visiondeck.train.runner",
    "RunResult": "visiondeck.train.runner",
    "find_lr": "visiondeck.train.runner",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
