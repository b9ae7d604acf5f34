"""Magnitude pruning with a short fine-tune, before export (`visiondeck export --prune 0.3`).

Unstructured pruning (global L1 over every conv and linear weight but the classifier)
zeroes the smallest weights: it keeps accuracy best and makes the weights compress well,
but dense ONNX Runtime kernels run no faster. Structured pruning removes whole channels
for real with torch-pruning's dependency graph: the channels of each coupled group (a
conv's filters, the BatchNorm after it, the next layer's inputs, both sides of a residual
add) with the smallest L2 norm go, so the network and its ONNX file get smaller and
faster. Either way a few hundred fine-tuning steps on the training split recover most of
what pruning took, and the exported model is an ordinary (dense, smaller) network.

`FinetuneConfig()` distils: the unpruned network, kept frozen, is the teacher, and the
pruned copy learns its softened answers as well as the labels (Hinton's
α·KL(student/T ‖ teacher/T)·T² + (1−α)·CE), so a network that starts from a few per cent
accuracy after the cut gets a whole distribution per image to learn from instead of one
label; the learning rate warms up linearly, then follows a cosine to zero. `rounds` > 1
prunes in steps (torch-pruning's iterative schedule: the same final widths) with a share of
the fine-tuning after each. `DEFAULT_FINETUNE` (what export and the sweep use unless told)
is labels only with warm-up + cosine: on the benchmark model it measured better than both
distillation and the constant-rate fine-tune of before (`LEGACY_FINETUNE`).

A structurally pruned network no longer has the shapes its architecture name builds, so
`fit_to_state` reshapes a freshly built network to the saved weights' shapes before they
are loaded (what `load_torch_model` does for a Bundle whose `pruning.method` is
"structured").
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from visiondeck.export.samples import LabelledBatch

__all__ = [
    "DEFAULT_FINETUNE",
    "LEGACY_FINETUNE",
    "PRUNE_METHODS",
    "FinetuneConfig",
    "PruneReport",
    "conv_channels",
    "distillation_loss",
    "finetune_lrs",
    "fit_to_state",
    "parameter_count",
    "prune_and_finetune",
    "remove_channels",
    "sparsity",
]

PRUNE_METHODS = ("unstructured", "structured")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class FinetuneConfig:
    """How a pruned network is retrained (the defaults are export's and the sweep's)."""

    distill: bool = True  # the unpruned network teaches the pruned one
    alpha: float = 0.9  # weight of the teacher's softened answers against the labels' CE
    temperature: float = 4.0  # softens both distributions; the KL term is scaled by T²
    schedule: str = "cosine"  # "cosine": linear warm-up then cosine to zero; "constant"
    warmup: float = 0.05  # share of the steps spent warming up (cosine only)
    rounds: int = 1  # prune in this many steps, fine-tuning an equal share after each

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be between 0 and 1, not {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"distillation temperature must be positive, not {self.temperature}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warm-up share must be in [0, 1), not {self.warmup}")
        if self.rounds < 1:
            raise ValueError(f"pruning rounds must be at least 1, not {self.rounds}")


# the fine-tune as it was before distillation: labels only, constant learning rate, one cut
LEGACY_FINETUNE = FinetuneConfig(distill=False, schedule="constant", warmup=0.0)
# what export and the sweep use unless told: labels with warm-up + cosine. Measured on the
# 3-epoch Fashion-MNIST model, 50 % pruned, 600 steps: 0.03 points *gained* against 0.53 lost
# with the constant rate and 1.33 lost distilling (α 0.9, T 4) (benchmarks/README.md)
DEFAULT_FINETUNE = FinetuneConfig(distill=False)


def finetune_lrs(lr: float, steps: int, config: FinetuneConfig) -> list[float]:
    """The learning rate of each of `steps` fine-tuning steps.

    Cosine: a linear warm-up from lr/warm-up-steps to `lr`, then a half cosine to zero, so
    the freshly cut network is not shaken by a full rate and ends settled.
    """
    if config.schedule == "constant" or steps <= 0:
        return [lr] * max(steps, 0)
    warm = min(max(1, round(config.warmup * steps)), steps) if config.warmup else 0
    rates = [lr * (i + 1) / warm for i in range(warm)]
    rest = steps - warm
    rates += [lr * 0.5 * (1.0 + math.cos(math.pi * i / rest)) for i in range(rest)]
    return rates


def distillation_loss(
    student: Any, teacher: Any, labels: Any, *, alpha: float, temperature: float
) -> Any:
    """α·KL(softmax(teacher/T) ‖ softmax(student/T))·T² + (1 − α)·CE(student, labels)."""
    import torch.nn.functional as F

    t = temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * soft * (t * t) + (1.0 - alpha) * F.cross_entropy(student, labels)


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
    parameters_before: int = 0
    parameters_after: int = 0
    channels: dict[str, int] | None = None  # conv layer -> output channels kept (structured)
    finetune: dict[str, Any] | None = None  # the FinetuneConfig used

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


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def conv_channels(model: Any) -> dict[str, int]:
    """Output channels of every conv layer, by module name."""
    from torch import nn

    return {
        name: int(m.out_channels) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
    }


def _apply(model: Any, amount: float, method: str, example: Any) -> list[tuple[Any, str]]:
    from torch.nn.utils import prune

    if method == "structured":
        remove_channels(model, amount, example)
        return []
    params = _prunable(model)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return [(m, n) for m, n in params if prune.is_pruned(m)]


def remove_channels(model: Any, amount: float, example: Any) -> None:
    """Remove `amount` of the channels of every prunable group, smallest L2 norm first.

    torch-pruning traces `model(example)` into a dependency graph, so a channel is removed
    from every layer that shares it; the classifier's outputs (the classes) and the
    network's input channels are never touched.
    """
    _channel_pruner(model, amount, example, rounds=1)()


def _channel_pruner(model: Any, amount: float, example: Any, *, rounds: int) -> Callable[[], None]:
    """A function that cuts the next of `rounds` equal steps towards `amount` when called.

    The graph is traced once; torch-pruning's iterative schedule measures every step against
    the original widths, so `rounds` steps end on the widths one cut would give.
    """
    import torch
    import torch_pruning as tp

    head = _head(model)
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # channel counts in multiples of 8 keep ONNX Runtime on its vectorised kernels: measured
    # on resnet_small_t, 30 % pruned to odd widths ran *slower* than the unpruned network
    round_to = 8 if widths and min(widths) >= 16 and all(w % 8 == 0 for w in widths) else None
    with _plain_pools(model):
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=amount,
            iterative_steps=rounds,
            ignored_layers=[head] if head is not None else [],
            round_to=round_to,
        )

    def step() -> None:
        with _plain_pools(model), torch.no_grad():
            pruner.step()

    return step


@contextlib.contextmanager
def _plain_pools(model: Any) -> Iterator[None]:
    """Trace torch's adaptive pool in place of our exportable one (same bins, same values).

    The exportable pool writes uneven bins as products with constant matrices; traced
    through, those matmuls send torch-pruning's index mapping into an endless expansion.
    """
    from torch import nn

    from visiondeck.models.layers import AdaptiveAvgPool2dExportable

    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, AdaptiveAvgPool2dExportable):
                swapped.append((parent, name, child))
                setattr(parent, name, nn.AdaptiveAvgPool2d(child.output_size))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _head(model: Any) -> Any:
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def fit_to_state(model: Any, state: dict[str, Any]) -> None:
    """Reshape conv, BatchNorm and linear layers in place to the shapes in `state`.

    Rebuilds a structurally pruned network from its architecture name and saved weights:
    each layer keeps its class (timm's same-padding convs stay what they are); only its
    tensors and channel counts change. Depthwise convs stay depthwise.
    """
    import torch
    from torch import nn

    def fresh(shape: Any) -> nn.Parameter:
        return nn.Parameter(torch.empty(tuple(shape)))

    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight")
        if weight is None or not hasattr(module, "weight") or module.weight is None:
            continue
        if tuple(weight.shape) == tuple(module.weight.shape):
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            groups = int(weight.shape[0]) if depthwise else module.groups
            module.out_channels, module.groups = int(weight.shape[0]), groups
            module.in_channels = int(weight.shape[1]) * groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = int(weight.shape[0]), int(weight.shape[1])
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = int(weight.shape[0])
            for buffer in ("running_mean", "running_var"):
                if getattr(module, buffer, None) is not None:
                    setattr(module, buffer, torch.empty(tuple(weight.shape)))
        else:
            continue
        module.weight = fresh(weight.shape)
        bias = state.get(f"{name}.bias")
        if bias is not None and getattr(module, "bias", None) is not None:
            module.bias = fresh(bias.shape)


def prune_and_finetune(
    model: Any,
    *,
    amount: float,
    method: str = "unstructured",
    train_batches: Callable[[], Iterable[LabelledBatch]],
    evaluate: Callable[[Any], float | None],
    steps: int = 200,
    lr: float = 1e-4,
    optimizer: str = "adamw",
    finetune: FinetuneConfig | None = None,
) -> PruneReport:
    """Prune `model` in place, fine-tune it for `steps` batches, bake the masks in.

    `train_batches()` yields prepared training batches (it is called again when exhausted);
    `evaluate(model)` returns validation accuracy (None without validation data).
    "structured" removes channels (the model gets smaller); "unstructured" zeroes weights.
    `optimizer`: "sgd" (momentum 0.9, Nesterov) or "adamw", as the run was trained; `lr` is
    the peak of `finetune`'s schedule (default `DEFAULT_FINETUNE`; `FinetuneConfig()` is
    distillation from the unpruned network with warm-up + cosine, `LEGACY_FINETUNE` the
    labels-only constant-rate fine-tune of before).
    """
    import torch
    from torch.nn.utils import prune

    config = finetune if finetune is not None else DEFAULT_FINETUNE
    if not 0.0 < amount < 1.0:
        raise ValueError(f"pruning amount must be between 0 and 1, not {amount}")
    if method not in PRUNE_METHODS:
        raise ValueError(f"pruning method must be one of {PRUNE_METHODS}, not {method!r}")
    if config.rounds > 1 and method != "structured":
        raise ValueError("pruning in rounds needs the structured method")
    before = evaluate(model)
    size_before = parameter_count(model)
    first = next(iter(_cycle(train_batches)), None)
    if first is None:
        raise ValueError("pruning needs training images to trace and fine-tune the network")
    model.eval()
    teacher = copy.deepcopy(model).eval() if config.distill else None
    if teacher is not None:
        teacher.requires_grad_(False)
    example = torch.from_numpy(first.images[:1])
    pruned: list[tuple[Any, str]] = []
    try:
        if method == "structured":
            cut = _channel_pruner(model, amount, example, rounds=config.rounds)
            cut()
        else:
            pruned = _apply(model, amount, method, example)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            f"{method} pruning failed on this network ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    after_prune = evaluate(model)
    shares = [steps // config.rounds + (i < steps % config.rounds) for i in range(config.rounds)]
    done = 0
    for round_ in range(config.rounds):
        if round_:
            cut()
        done += _finetune(model, teacher, train_batches, shares[round_], lr, optimizer, config)
    for module, name in pruned:
        prune.remove(module, name)
    return PruneReport(
        amount,
        method,
        round(sparsity(model), 6),
        done,
        lr,
        before,
        after_prune,
        evaluate(model),
        size_before,
        parameter_count(model),
        conv_channels(model) if method == "structured" else None,
        asdict(config),
    )


def _finetune(
    model: Any,
    teacher: Any,
    train_batches: Callable[[], Iterable[LabelledBatch]],
    steps: int,
    lr: float,
    optimizer: str,
    config: FinetuneConfig,
) -> int:
    """`steps` optimiser steps on `model` (a fresh optimiser: the shapes may have changed)."""
    import torch

    if steps <= 0:
        return 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":  # the run's own optimiser: an SGD learning rate is no AdamW one
        optimiser: Any = torch.optim.SGD(trainable, lr=lr, momentum=0.9, nesterov=True)
    else:
        optimiser = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    rates = finetune_lrs(lr, steps, config)
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
            for group in optimiser.param_groups:
                group["lr"] = rates[done]
            optimiser.zero_grad(set_to_none=True)
            logits = model(x)
            if teacher is None:
                loss = loss_fn(logits, y)
            else:
                with torch.no_grad():
                    target = teacher(x)
                loss = distillation_loss(
                    logits, target, y, alpha=config.alpha, temperature=config.temperature
                )
            loss.backward()
            optimiser.step()
            done += 1
    finally:
        model.eval()
    return done


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
