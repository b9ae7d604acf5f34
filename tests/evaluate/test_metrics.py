"""Metric functions against hand-computed values (and scikit-learn as an oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as sk

from visiondeck.evaluate import metrics as m
from visiondeck.evaluate.scores import (
    bootstrap_ci,
    compute_metrics,
    headline_metrics,
    most_confused,
)

# 3 classes, 10 images; worked out by hand below
Y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
P = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])


def test_confusion_and_per_class_by_hand() -> None:
    cm = m.confusion_matrix(Y, P, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    report = m.class_report(cm)
    # class 0: tp 3, fp 1, fn 1 → P 3/4, R 3/4; class 1: tp 2, fp 1, fn 1 → 2/3, 2/3
    # class 2: tp 2, fp 1, fn 1 → 2/3, 2/3; specificity 0: tn 5 / (5 + 1)
    assert report.precision == pytest.approx([3 / 4, 2 / 3, 2 / 3])
    assert report.recall == pytest.approx([3 / 4, 2 / 3, 2 / 3])
    assert report.specificity == pytest.approx([5 / 6, 6 / 7, 6 / 7])
    assert report.support.tolist() == [4, 3, 3]
    assert report.macro()["f1"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert report.weighted()["recall"] == pytest.approx(0.7)  # = accuracy
    assert m.accuracy(Y, P) == pytest.approx(0.7)
    assert m.balanced_accuracy(Y, P, 3) == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert m.normalize_confusion(cm)[0].tolist() == [0.75, 0.25, 0.0]
    # Gorodkin: (c·s − Σ p_k t_k) / sqrt((s² − Σp²)(s² − Σt²)), c=7, s=10, t=p=(4,3,3)
    assert m.matthews_corrcoef(cm) == pytest.approx((70 - 34) / (100 - 34))


def test_perfect_and_constant_classifiers() -> None:
    y = np.array([0, 1, 1, 2, 2, 2])
    perfect = m.confusion_matrix(y, y, 3)
    assert m.matthews_corrcoef(perfect) == 1.0
    assert m.class_report(perfect).f1.tolist() == [1.0, 1.0, 1.0]
    assert m.roc_auc(y == 2, (y == 2).astype(float)) == 1.0
    constant = np.full(6, 2)
    cm = m.confusion_matrix(y, constant, 3)
    report = m.class_report(cm)
    assert m.accuracy(y, constant) == 0.5
    assert m.balanced_accuracy(y, constant, 3) == pytest.approx(1 / 3)
    assert m.matthews_corrcoef(cm) == 0.0  # undefined → 0, as scikit-learn
    assert report.precision.tolist() == [0.0, 0.0, 0.5]  # never predicted → 0
    assert report.specificity[2] == 0.0 and report.recall[2] == 1.0
    assert m.roc_auc(y == 2, np.full(6, 0.9)) == 0.5  # constant scores: a coin
    assert math.isnan(m.roc_auc(np.zeros(4, bool), np.arange(4.0)))  # one class only


def test_roc_pr_and_topk_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    fpr, tpr, thresholds = m.roc_curve(y, s)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds[0] == np.inf
    assert m.roc_auc(y, s) == pytest.approx(0.75)
    # ranks: 0.8 (+) P=1 R=.5; 0.4 (−); 0.35 (+) P=2/3 R=1 → AP = .5·1 + .5·2/3
    assert m.average_precision(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)
    scores = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    truth = np.array([1, 0, 2])
    assert m.top_k_accuracy(truth, scores, 1) == 0.0
    assert m.top_k_accuracy(truth, scores, 2) == pytest.approx(2 / 3)
    assert m.top_k_accuracy(truth, scores, 3) == 1.0
    assert m.sensitivity_specificity(Y, P, positive=2) == pytest.approx((2 / 3, 6 / 7))


def test_mcnemar_exact_and_chi_square() -> None:
    a = np.array([True] * 6 + [False] * 2 + [True] * 10)
    b = np.array([False] * 6 + [True] * 2 + [True] * 10)
    exact = m.mcnemar(a, b)  # b=6, c=2: p = 2 · P(X ≤ 2 | n=8) = 2 · 37/256
    assert (exact.b, exact.c, exact.exact) == (6, 2, True)
    assert exact.p_value == pytest.approx(2 * 37 / 256)
    big_a = np.r_[np.ones(30, bool), np.zeros(10, bool)]
    big_b = ~big_a
    chi = m.mcnemar(big_a, big_b)  # (|30 − 10| − 1)² / 40 = 9.025
    assert chi.statistic == pytest.approx(9.025) and not chi.exact
    assert chi.p_value == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert m.mcnemar(a, a).p_value == 1.0


def test_against_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    scores = rng.random((300, 4)) + np.eye(4)[y] * rng.random(300)[:, None]
    probs = scores / scores.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    cm = m.confusion_matrix(y, pred, 4)
    assert np.array_equal(cm, sk.confusion_matrix(y, pred))
    assert m.matthews_corrcoef(cm) == pytest.approx(sk.matthews_corrcoef(y, pred))
    assert m.balanced_accuracy(y, pred, 4) == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert m.class_report(cm).macro()["f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    rocs, prs = m.one_vs_rest_auc(y, probs)
    for k in range(4):
        assert rocs[k] == pytest.approx(sk.roc_auc_score(y == k, probs[:, k]))
        assert prs[k] == pytest.approx(sk.average_precision_score(y == k, probs[:, k]))
    assert m.top_k_accuracy(y, probs, 2) == pytest.approx(sk.top_k_accuracy_score(y, probs, k=2))


def test_compute_metrics_and_intervals() -> None:
    probs = np.eye(3)[P] * 0.8 + 0.2 / 3
    full = compute_metrics(Y, probs, ["a", "b", "c"], positive=2)
    assert full["accuracy"] == pytest.approx(0.7)
    assert full["per_class"]["a"]["support"] == 4
    assert full["positive_class"]["sensitivity"] == pytest.approx(2 / 3, abs=1e-6)
    # with 3 classes top-3 is trivially 1 and top-5 meaningless: only top-1 is reported
    assert full["top_k"] == {"1": pytest.approx(0.7)}
    ci = bootstrap_ci(Y, probs, n_boot=300, n_boot_auc=50)
    low, high = ci["accuracy"]
    assert low <= 0.7 <= high and high - low > 0.1  # 10 images: a wide interval
    assert headline_metrics(full)["accuracy"] == pytest.approx(0.7)
    assert not any(key.startswith("top") for key in headline_metrics(full))
    assert most_confused(np.array(full["confusion_matrix"]["counts"]), ["a", "b", "c"])[0] == {
        "true": "a", "predicted": "b", "count": 1, "share": 0.25}


def test_top_k_by_hand_when_there_are_more_classes_than_k() -> None:
    # 6 classes; the true class ranks 1st, 2nd, 3rd, 4th and 6th in the five rows
    scores = np.array([[0.50, 0.20, 0.10, 0.08, 0.07, 0.05],
                       [0.30, 0.40, 0.10, 0.08, 0.07, 0.05],
                       [0.05, 0.10, 0.20, 0.40, 0.15, 0.10],
                       [0.25, 0.25, 0.20, 0.15, 0.10, 0.05],
                       [0.04, 0.30, 0.20, 0.20, 0.21, 0.05]])
    labels = np.array([0, 0, 4, 3, 0])
    # ranks of the truth: 1, 2, 3, 4, 6 (row 4: 0.15 after .25, .25, .20; row 5: last)
    full = compute_metrics(labels, scores, list("abcdef"))
    assert full["top_k"] == {"1": pytest.approx(1 / 5), "3": pytest.approx(3 / 5),
                             "5": pytest.approx(4 / 5)}
    headline = headline_metrics(full)
    assert headline["top3_accuracy"] == pytest.approx(3 / 5)
    assert headline["top5_accuracy"] == pytest.approx(4 / 5)
    assert "top1_accuracy" not in headline  # that one is "accuracy"
    assert full["top_k"]["3"] == pytest.approx(sk.top_k_accuracy_score(labels, scores, k=3,
                                                                       labels=range(6)))
