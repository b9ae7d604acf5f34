"""Magnitude pruning with a short fine-tune, before export (`visiondeck export --prune 0.3`).

Unstructured pruning (global L1 over every conv and linear weight but the classifier)
zeroes the smallest weights: it keeps accuracy best and makes the weights compress well,
but dense ONNX Runtime kernels run no faster. Structured pruning (L2 norm of whole conv
output channels) zeroes entire filters: coarser, costs more accuracy, and is what a later
channel-slimming step needs. Either way a few hundred fine-tuning steps on the training
split recover most of what pruning took, and the masks are then baked into the weights so
the exported model is an ordinary network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from visiondeck.export.samples import LabelledBatch

__all__ = ["PRUNE_METHODS", "PruneReport", "prune_and_finetune", "sparsity"]

PRUNE_METHODS = ("unstructured", "structured")


@dataclass(frozen=True)
class PruneReport:
    amount: float
    method: str
    sparsity: float  # share of exactly-zero weights over the pruned layers, after fine-tuning
    steps: int
    lr: float
    val_accuracy_before: float | None  # the unpruned network
    val_accuracy_pruned: float | None  # right after pruning, before fine-tuning
    val_accuracy_after: float | None  # after fine-tuning

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prunable(model: Any) -> list[tuple[Any, str]]:
    """Conv and linear weights, except the last linear layer (the classifier)."""
    from torch import nn

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    head = linears[-1] if linears else None
    return [(m, "weight") for m in layers if m is not head]


def sparsity(model: Any) -> float:
    """Share of zero weights over the layers pruning touches."""
    zeros = total = 0
    for module, name in _prunable(model):
        weight = getattr(module, name)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else 0.0


def _apply(model: Any, amount: float, method: str) -> list[tuple[Any, str]]:
    from torch import nn
    from torch.nn.utils import prune

    params = _prunable(model)
    if method == "unstructured":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module, name in params:
            if isinstance(module, nn.Conv2d) and module.out_channels > 1:
                prune.ln_structured(module, name, amount=amount, n=2, dim=0)
    return [(m, n) for m, n in params if prune.is_pruned(m)]


def prune_and_finetune(
    model: Any,
    *,
    amount: float,
    method: str = "unstructured",
    train_batches: Callable[[], Iterable[LabelledBatch]],
    evaluate: Callable[[Any], float | None],
    steps: int = 200,
    lr: float = 1e-4,
) -> PruneReport:
    """Prune `model` in place, fine-tune it for `steps` batches, bake the masks in.

    `train_batches()` yields prepared training batches (it is called again when exhausted);
    `evaluate(model)` returns validation accuracy (None without validation data).
    """
    import torch
    from torch.nn.utils import prune

    if not 0.0 < amount < 1.0:
        raise ValueError(f"pruning amount must be between 0 and 1, not {amount}")
    if method not in PRUNE_METHODS:
        raise ValueError(f"pruning method must be one of {PRUNE_METHODS}, not {method!r}")
    before = evaluate(model)
    pruned = _apply(model, amount, method)
    after_prune = evaluate(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    done = 0
    model.train()
    try:
        for batch in _cycle(train_batches):
            if done >= steps:
                break
            if len(batch.labels) < 2:  # BatchNorm cannot train on a single image
                continue
            x = torch.from_numpy(batch.images)
            y = torch.from_numpy(batch.labels)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimiser.step()
            done += 1
    finally:
        model.eval()
    for module, name in pruned:
        prune.remove(module, name)
    return PruneReport(amount, method, round(sparsity(model), 6), done, lr, before, after_prune,
                       evaluate(model))


def _cycle(factory: Callable[[], Iterable[LabelledBatch]]) -> Iterator[LabelledBatch]:
    """The training batches again and again (stops if a pass yields nothing)."""
    while True:
        seen = False
        for batch in factory():
            seen = True
            yield batch
        if not seen:
            return


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy, None for no samples."""
    if len(labels) == 0:
        return None
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())
