"""Losses and the one imbalance switch (`train.balance`).

Class weights are computed from the *training* split only and returned, so the run records
exactly what was used; inverse-frequency weights are normalised to average 1 so the loss
scale (and hence a tuned learning rate) does not move when the switch is turned on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visiondeck.config import TrainConfig

__all__ = ["FocalLoss", "build_loss", "class_weights"]


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[float]:
    """Inverse-frequency weights, mean 1 over classes; a class absent from training gets 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = 1.0 / counts[present]
    weights[present] *= present.sum() / weights[present].sum()
    return [round(float(w), 6) for w in weights]


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy examples by (1 - p_t)^gamma.

    Accepts hard labels or soft targets (mixup/cutmix), optional per-class weights (alpha)
    and label smoothing, so it composes with every other training option.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        soft = _soft_targets(target, num_classes, self.label_smoothing, logits.dtype)
        log_p = F.log_softmax(logits.float(), dim=1)
        focal = (1.0 - log_p.exp()).pow(self.gamma)
        per_class = -soft * focal * log_p
        if self.weight is not None:
            per_class = per_class * self.weight.to(per_class.dtype)
        return per_class.sum(dim=1).mean()


def _soft_targets(target: torch.Tensor, num_classes: int, smoothing: float,
                  dtype: torch.dtype) -> torch.Tensor:
    if target.dim() == 1:
        target = F.one_hot(target, num_classes).to(torch.float32)
    if smoothing:
        target = target * (1.0 - smoothing) + smoothing / num_classes
    return target


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy that takes hard labels or mixed soft targets, with weights and smoothing."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            return F.cross_entropy(logits, target, weight=self.weight,
                                   label_smoothing=self.label_smoothing)
        soft = _soft_targets(target, logits.shape[1], self.label_smoothing, logits.dtype)
        per_class = -soft * F.log_softmax(logits.float(), dim=1)
        if self.weight is not None:
            per_class = per_class * self.weight.to(per_class.dtype)
        return per_class.sum(dim=1).mean()


def build_loss(cfg: TrainConfig, weights: Sequence[float] | None) -> nn.Module:
    """Loss for a recipe. `balance=weights` weights CE (or focal), `balance=focal` uses focal
    loss, `balance=sampler` balances the data instead and leaves the loss unweighted."""
    use_weights = cfg.balance == "weights" and weights is not None
    tensor = torch.tensor(list(weights), dtype=torch.float32) if use_weights else None
    if cfg.loss == "focal" or cfg.balance == "focal":
        return FocalLoss(cfg.focal_gamma, tensor, cfg.label_smoothing)
    return SoftTargetCrossEntropy(tensor, cfg.label_smoothing)
