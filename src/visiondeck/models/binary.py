"""The one-logit binary head, shaped as two-class logits for everything downstream.

A binary task can be trained as two-class softmax (two logits, cross-entropy) or as one
logit `z` with binary cross-entropy (and `pos_weight`, the "weighted BCE" of medical
recipes). `BinaryLogit` is that one-logit head, but it *returns* the pair `(-z/2, z/2)`:

    softmax((-z/2, z/2)) = (1 - sigmoid(z), sigmoid(z))

exactly, so evaluation, calibration, ONNX export, the Predictor and the server, which all
read two-class logits, need nothing new and cannot disagree about what the probability
of the positive class (index 1) is. The loss reads `z` back with `binary_logit`. The
symmetric split (rather than `(0, z)`) keeps a gradient for both classes, so Grad-CAM of
the negative class shows the evidence against the positive one instead of nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from visiondeck.models.errors import ModelError

__all__ = ["BinaryLogit", "binary_logit", "make_binary"]


class BinaryLogit(nn.Linear):
    """`nn.Linear(in_features, 1)` whose output is the two-class logits `(-z/2, z/2)`."""

    def __init__(self, in_features: int, bias: bool = True) -> None:
        super().__init__(in_features, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)
        return torch.cat([-0.5 * z, 0.5 * z], dim=-1)


def binary_logit(logits: torch.Tensor) -> torch.Tensor:
    """The positive-class logit `z` of two-class logits (for `BinaryLogit`: exactly its z;
    for any two logits: their difference, whose sigmoid is softmax's p(class 1))."""
    return logits[:, 1] - logits[:, 0]


def make_binary(model: nn.Module, name: str = "model") -> nn.Module:
    """Replace the two-class final `nn.Linear` of `model` by a `BinaryLogit`, in place."""
    from visiondeck.models.transfer import classifier

    head = classifier(model)
    if not isinstance(head, nn.Linear) or head.out_features != 2:
        raise ModelError(
            f"model.head=binary needs a final linear layer with two outputs; "
            f"{name} has {type(head).__name__}",
            hint="binary heads are for two-class tasks; use model.head=softmax",
        )
    if isinstance(head, BinaryLogit):
        return model
    path = next(n for n, m in model.named_modules() if m is head)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    new = BinaryLogit(head.in_features, bias=head.bias is not None)
    setattr(parent, attr, new.to(head.weight.device, head.weight.dtype))
    return model
