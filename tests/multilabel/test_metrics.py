"""Multi-label scores against hand-computed values and scikit-learn, thresholds chosen to
a known optimum, and the losses and sampler against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from tests.multilabel.synth import LABELS
from visiondeck.config import TrainConfig
from visiondeck.data.dataset import rare_label_sampler
from visiondeck.errors import ConfigError
from visiondeck.evaluate.multilabel import (
    bootstrap_multilabel,
    choose_thresholds,
    f1_threshold,
    multilabel_metrics,
    sensitivity_threshold,
    sigmoid,
)
from visiondeck.train.losses import AsymmetricLoss, MultiLabelBCE, build_loss, label_pos_weights

Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
P = np.array([[0.9, 0.2, 0.6], [0.3, 0.7, 0.4], [0.8, 0.4, 0.1], [0.1, 0.3, 0.2]])


def test_scores_by_hand() -> None:
    got = multilabel_metrics(Y, P, LABELS, [0.5, 0.5, 0.5])
    # decided: [1,0,1], [0,1,0], [1,0,0], [0,0,0]: one miss (row 2, label 1) of 12 cells
    assert got["hamming_loss"] == pytest.approx(1 / 12)
    assert got["subset_accuracy"] == pytest.approx(3 / 4)
    blue, green, red = (got["per_label"][name] for name in LABELS)
    assert (blue["f1"], blue["sensitivity"], blue["specificity"]) == (1.0, 1.0, 1.0)
    assert green["sensitivity"] == 0.5 and green["precision"] == 1.0
    assert green["f1"] == pytest.approx(2 / 3)
    assert red["f1"] == 1.0 and red["support"] == 1 and red["threshold"] == 0.5
    assert got["f1_macro"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert got["f1_micro"] == pytest.approx(2 * 4 / (2 * 4 + 0 + 1))
    # green: positives 0.7 and 0.4, negatives 0.2 and 0.3: ranked 0.7+, 0.4+ above all
    assert green["average_precision"] == 1.0 and green["roc_auc"] == 1.0
    assert got["map_macro"] == 1.0


def test_scores_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < 0.35).astype(int)
    p = np.clip(y * 0.3 + rng.random((60, 4)) * 0.7, 0, 1)
    t = np.array([0.4, 0.5, 0.6, 0.55])
    got = multilabel_metrics(y, p, ["a", "b", "c", "d"], t)
    d = (p >= t).astype(int)
    assert got["map_macro"] == pytest.approx(skm.average_precision_score(y, p, average="macro"))
    assert got["map_micro"] == pytest.approx(skm.average_precision_score(y, p, average="micro"))
    assert got["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"))
    assert got["roc_auc_micro"] == pytest.approx(skm.roc_auc_score(y, p, average="micro"))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, d, average="macro"))
    assert got["f1_micro"] == pytest.approx(skm.f1_score(y, d, average="micro"))
    assert got["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, d))
    assert got["hamming_loss"] == pytest.approx(skm.hamming_loss(y, d))


def test_a_label_without_positives_is_nan_and_skipped() -> None:
    y = Y.copy()
    y[:, 2] = 0
    got = multilabel_metrics(y, P, LABELS, [0.5] * 3)
    assert math.isnan(got["per_label"]["red"]["average_precision"])
    assert got["map_macro"] == pytest.approx(np.mean([
        got["per_label"]["blue"]["average_precision"],
        got["per_label"]["green"]["average_precision"]]))


def test_f1_threshold_known_optimum() -> None:
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.1])
    # cuts: >=0.9 F1 2/4, >=0.8 F1 4/5, >=0.7 F1 4/6, >=0.6 F1 6/7 (best), >=0.3 6/8
    assert f1_threshold(y, s) == pytest.approx((0.6 + 0.3) / 2)
    assert f1_threshold(np.zeros(3), s[:3]) is None
    # sensitivity 2/3 needs the 2nd best positive (0.8): halfway to 0.7
    assert sensitivity_threshold(y, s, 2 / 3) == pytest.approx(0.75)
    assert sensitivity_threshold(y, s, 1.0) == pytest.approx(0.45)
    chosen, defaulted = choose_thresholds(np.c_[y, np.zeros(6)], np.c_[s, s])
    assert chosen.tolist() == pytest.approx([0.45, 0.5]) and defaulted == [1]


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((80, 3)) < 0.4).astype(int)
    p = np.clip(y * 0.4 + rng.random((80, 3)) * 0.6, 0, 1)
    t = [0.5] * 3
    first = bootstrap_multilabel(y, p, t, n_boot=100, n_boot_ap=40, seed=3)
    assert first == bootstrap_multilabel(y, p, t, n_boot=100, n_boot_ap=40, seed=3)
    point = multilabel_metrics(y, p, ["a", "b", "c"], t)
    for name in ("map_macro", "roc_auc_macro", "f1_micro", "hamming_loss", "subset_accuracy"):
        low, high = first[name]
        assert low <= point[name] <= high and low < high


def test_sigmoid_is_stable() -> None:
    assert sigmoid(np.array([0.0, 1000.0, -1000.0])).tolist() == [0.5, 1.0, 0.0]


def test_pos_weights_and_bce() -> None:
    matrix = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert label_pos_weights(matrix) == [pytest.approx(1 / 3), 3.0, 1.0]
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.4]])
    target = torch.tensor([[1, 0, 1], [0, 1, 0]])
    loss = MultiLabelBCE([2.0, 1.0, 0.5])(logits, target)
    # summed over the 3 labels, averaged over the 2 images: each logit's gradient is
    # (p - y) / N, as a softmax cross-entropy's (torch's default mean would divide by 3 more)
    expected = 3 * torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target.float(), pos_weight=torch.tensor([2.0, 1.0, 0.5]))
    assert float(loss) == pytest.approx(float(expected))
    z = logits.clone().requires_grad_(True)
    MultiLabelBCE()(z, target).backward()
    assert torch.allclose(z.grad, (torch.sigmoid(logits) - target) / 2)
    cfg = TrainConfig(balance="weights")
    assert build_loss(cfg, [2.0, 1.0, 0.5], multilabel=True).pos_weight.tolist() == [2, 1, .5]
    assert build_loss(TrainConfig(), [2.0, 1.0], multilabel=True).pos_weight is None
    with pytest.raises(ConfigError):
        build_loss(TrainConfig(loss="focal"), None, multilabel=True)
    with pytest.raises(ConfigError):
        build_loss(TrainConfig(loss="asl"), None)


def test_asymmetric_loss_by_hand() -> None:
    loss = AsymmetricLoss(gamma_neg=2.0, gamma_pos=1.0, clip=0.1)
    logits = torch.tensor([[0.0, math.log(4.0)]])  # p = 0.5 and 0.8
    target = torch.tensor([[1, 0]])
    # positive (p 0.5): -log(0.5) · 0.5^1; negative (p 0.8 → 0.7): -log(0.3) · 0.7^2
    expected = -math.log(0.5) * 0.5 - math.log(0.3) * 0.49  # summed over labels, 1 image
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-5)
    # a negative under the clip costs nothing
    assert float(AsymmetricLoss(clip=0.2)(torch.tensor([[-2.0]]), torch.tensor([[0]]))) == 0


def test_rare_label_sampler_weights() -> None:
    matrix = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0]])
    sampler = rare_label_sampler(matrix, seed=0)
    # common on 4 files (1/4), rare on 1 (1), the unlabelled file its own category (1)
    assert sampler.weights.tolist() == [0.25, 0.25, 0.25, 1.0, 1.0]
    assert list(sampler) == list(sampler)  # epoch-seeded: the same epoch draws the same
