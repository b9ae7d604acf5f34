"""Losses and class weights against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from visiondeck.config import TrainConfig
from visiondeck.train.losses import FocalLoss, SoftTargetCrossEntropy, build_loss, class_weights


def test_class_weights_are_inverse_frequency_with_mean_one() -> None:
    weights = class_weights([0] * 80 + [1] * 20, 3)
    # 1/80 and 1/20 scaled so the two present classes average 1; absent class gets 0
    assert weights == pytest.approx([0.4, 1.6, 0.0])


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 4), torch.randint(0, 4, (16,))
    assert FocalLoss(gamma=0.0)(logits, target) == pytest.approx(
        float(F.cross_entropy(logits, target)), rel=1e-5)


def test_focal_down_weights_easy_examples() -> None:
    easy = torch.tensor([[6.0, 0.0]])
    hard = torch.tensor([[0.2, 0.0]])
    target = torch.tensor([0])
    ce_ratio = F.cross_entropy(easy, target) / F.cross_entropy(hard, target)
    focal_ratio = FocalLoss(gamma=2.0)(easy, target) / FocalLoss(gamma=2.0)(hard, target)
    assert focal_ratio < ce_ratio / 100
    p = torch.softmax(hard, 1)[0, 0]
    assert FocalLoss(gamma=2.0)(hard, target) == pytest.approx(
        float(-(1 - p) ** 2 * torch.log(p)), rel=1e-5)


def test_weighted_and_smoothed_cross_entropy_match_torch() -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    weight = torch.tensor([0.5, 1.0, 2.0])
    loss = SoftTargetCrossEntropy(weight, label_smoothing=0.1)
    expected = F.cross_entropy(logits, target, weight=weight, label_smoothing=0.1)
    assert loss(logits, target) == pytest.approx(float(expected), rel=1e-5)
    # soft one-hot targets give the plain (unweighted) CE
    soft = F.one_hot(target, 3).float()
    assert SoftTargetCrossEntropy()(logits, soft) == pytest.approx(
        float(F.cross_entropy(logits, target)), rel=1e-5)


@pytest.mark.parametrize(
    ("balance", "loss", "kind", "weighted"),
    [("none", "ce", SoftTargetCrossEntropy, False), ("weights", "ce", SoftTargetCrossEntropy, True),
     ("sampler", "ce", SoftTargetCrossEntropy, False), ("focal", "ce", FocalLoss, False),
     ("weights", "focal", FocalLoss, True)],
)
def test_balance_switch_picks_the_loss(balance, loss, kind, weighted) -> None:
    built = build_loss(TrainConfig(balance=balance, loss=loss), [0.5, 1.5])
    assert isinstance(built, kind)
    assert (built.weight is not None) == weighted


def test_label_smoothing_raises_the_floor_of_a_perfect_prediction() -> None:
    logits, target = torch.tensor([[20.0, -20.0]]), torch.tensor([0])
    plain = float(SoftTargetCrossEntropy()(logits, target))
    smooth = float(SoftTargetCrossEntropy(label_smoothing=0.2)(logits, target))
    assert plain < 1e-6 and smooth > 0.1 * 40 * 0.9 / math.e
