"""Classification metrics as plain numpy functions of labels, predictions and scores.

Pure functions, no torch and no scikit-learn at run time, so every number in a report can
be checked by hand (the tests do, and use scikit-learn as an oracle where installed).
Conventions follow scikit-learn: confusion rows are the true class, columns the predicted
one; a ratio whose denominator is zero is 0.0 (precision of a never-predicted class);
ROC-AUC of a class absent from the labels (or present everywhere) is NaN, and NaN is
skipped by the macro averages of AUCs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ClassReport",
    "McNemarResult",
    "accuracy",
    "average_precision",
    "balanced_accuracy",
    "class_report",
    "confusion_matrix",
    "matthews_corrcoef",
    "mcnemar",
    "normalize_confusion",
    "one_vs_rest_auc",
    "precision_recall_curve",
    "roc_auc",
    "roc_curve",
    "sensitivity_specificity",
    "top_k_accuracy",
]


def _labels(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).ravel()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """int64 (K, K) counts: row = true class, column = predicted class."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} labels but {p.size} predictions")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes).astype(np.int64)


def normalize_confusion(cm: np.ndarray) -> np.ndarray:
    """Rows divided by their totals (each row: where that class's images went)."""
    return _ratio(cm, cm.sum(axis=1, keepdims=True))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    t, p = _labels(y_true), _labels(y_pred)
    return float((t == p).mean()) if t.size else float("nan")


@dataclass(frozen=True)
class ClassReport:
    """Per-class one-vs-rest counts and rates (arrays of length K) from a confusion matrix."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray
    support: np.ndarray
    precision: np.ndarray
    recall: np.ndarray  # = sensitivity
    specificity: np.ndarray
    f1: np.ndarray

    def macro(self) -> dict[str, float]:
        """Unweighted means over classes (scikit-learn's average="macro")."""
        return {"precision": float(self.precision.mean()), "recall": float(self.recall.mean()),
                "f1": float(self.f1.mean()), "specificity": float(self.specificity.mean())}

    def weighted(self) -> dict[str, float]:
        """Means weighted by support (scikit-learn's average="weighted")."""
        total = self.support.sum()
        if total == 0:
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "specificity": 0.0}
        w = self.support / total
        return {"precision": float(w @ self.precision), "recall": float(w @ self.recall),
                "f1": float(w @ self.f1), "specificity": float(w @ self.specificity)}


def class_report(cm: np.ndarray) -> ClassReport:
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return ClassReport(tp, fp, fn, tn, tp + fn, precision, recall, _ratio(tn, tn + fp),
                       _ratio(2 * precision * recall, precision + recall))


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray, positive: int
                            ) -> tuple[float, float]:
    """(sensitivity, specificity) treating class `positive` as positive, all others negative."""
    t, p = _labels(y_true) == positive, _labels(y_pred) == positive
    sens = float(_ratio((t & p).sum(), t.sum()))
    spec = float(_ratio((~t & ~p).sum(), (~t).sum()))
    return sens, spec


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in `y_true` (scikit-learn's definition)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    present = cm.sum(axis=1) > 0
    if not present.any():
        return float("nan")
    return float(class_report(cm).recall[present].mean())


def matthews_corrcoef(cm: np.ndarray) -> float:
    """Multi-class MCC (Gorodkin's R_K); 0.0 when undefined (a constant classifier)."""
    cm = np.asarray(cm, dtype=np.float64)
    t, p = cm.sum(axis=1), cm.sum(axis=0)
    n, correct = cm.sum(), np.trace(cm)
    cov_tp = correct * n - t @ p
    den = math.sqrt(max(n * n - p @ p, 0.0)) * math.sqrt(max(n * n - t @ t, 0.0))
    return float(cov_tp / den) if den > 0 else 0.0


def top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the k highest scores (ties: lower index first)."""
    t = _labels(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == t[:, None]).any(axis=1).mean()) if t.size else float("nan")


def _binary_counts(y_true: np.ndarray, scores: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, cumulative TP, cumulative FP) at each distinct score."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return s[last], tps.astype(np.float64), fps.astype(np.float64)


def roc_curve(y_true: np.ndarray, scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf."""
    thresholds, tps, fps = _binary_counts(y_true, scores)
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    pos, neg = tps[-1], fps[-1]
    fpr = fps / neg if neg > 0 else np.full_like(fps, np.nan)
    tpr = tps / pos if pos > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thresholds


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; ties count half); NaN with one class only."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.trapezoid(tpr, fpr))


def precision_recall_curve(y_true: np.ndarray, scores: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) from the highest threshold down, ending at recall 1."""
    thresholds, tps, fps = _binary_counts(y_true, scores)
    precision = _ratio(tps, tps + fps)
    recall = tps / tps[-1] if tps.size and tps[-1] > 0 else np.zeros_like(tps)
    return precision, recall, thresholds


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as scikit-learn's average precision: Σ (R_n − R_{n−1}) · P_n; NaN without
    positives."""
    y = np.asarray(y_true).astype(bool)
    if not y.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(y, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def one_vs_rest_auc(y_true: np.ndarray, probabilities: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (ROC-AUC, PR-AUC), each class against the rest."""
    t = _labels(y_true)
    probs = np.asarray(probabilities, dtype=np.float64)
    rocs = np.array([roc_auc(t == k, probs[:, k]) for k in range(probs.shape[1])])
    prs = np.array([average_precision(t == k, probs[:, k]) for k in range(probs.shape[1])])
    return rocs, prs


@dataclass(frozen=True)
class McNemarResult:
    """Paired test of two classifiers on the same images.

    b: images A got right and B wrong; c: the reverse. Exact two-sided binomial p-value when
    b + c < 25, else the chi-square statistic with continuity correction.
    """

    b: int
    c: int
    statistic: float
    p_value: float
    exact: bool


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError("McNemar needs the two models' results on the same images")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 0.0, 1.0, True)
    if n < 25:
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0**n
        return McNemarResult(b, c, float(min(b, c)), min(1.0, 2.0 * tail), True)
    statistic = (abs(b - c) - 1.0) ** 2 / n
    return McNemarResult(b, c, statistic, math.erfc(math.sqrt(statistic / 2.0)), False)
