"""Training: the Lightning system, its data, callbacks and the `train()` entry point.

This is the only package that imports Lightning. Networks stay plain `nn.Module`s from
`visiondeck.models`, so export and serving never depend on it.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "train": "visiondeck.train.runner",
    "resume": "visiondeck.train.runner",
    "RunResult": "visiondeck.train.runner",
    "find_lr": "visiondeck.train.runner",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'visiondeck.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
