"""Every metric of one labelled prediction set, and bootstrap confidence intervals.

`compute_metrics` turns (labels, probabilities) into the nested dict metrics.json holds;
`headline` flattens the few numbers a reader (and bundle.json) needs first;
`bootstrap_ci` resamples the test images with replacement to say how far each headline
number could move on another draw of test data of the same size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from visiondeck.evaluate import metrics as m

__all__ = [
    "bootstrap_ci",
    "clean_json",
    "compute_metrics",
    "headline_metrics",
    "most_confused",
]


def _r(value: float) -> float | None:
    """Rounded for JSON; NaN (undefined, e.g. AUC of an absent class) becomes null."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else round(value, 6)


def clean_json(value: Any) -> Any:
    """Recursively: numpy → Python, NaN/inf → None (bundle.json forbids NaN)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean_json(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _r(float(value))
    return value


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], *,
                    predictions: np.ndarray | None = None, positive: int | None = None,
                    ks: Sequence[int] = (1, 3, 5)) -> dict[str, Any]:
    """All metrics of the issue on one subset. `predictions` default to the argmax."""
    y = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    pred = probs.argmax(axis=1) if predictions is None else np.asarray(predictions)
    k = len(classes)
    cm = m.confusion_matrix(y, pred, k)
    report = m.class_report(cm)
    rocs, prs = m.one_vs_rest_auc(y, probs)
    per_class = {
        name: {"precision": _r(report.precision[i]), "recall": _r(report.recall[i]),
               "sensitivity": _r(report.recall[i]), "specificity": _r(report.specificity[i]),
               "f1": _r(report.f1[i]), "support": int(report.support[i]),
               "roc_auc": _r(rocs[i]), "pr_auc": _r(prs[i])}
        for i, name in enumerate(classes)
    }
    result: dict[str, Any] = {
        "n": int(y.size),
        "accuracy": _r(m.accuracy(y, pred)),
        "balanced_accuracy": _r(m.balanced_accuracy(y, pred, k)),
        "mcc": _r(m.matthews_corrcoef(cm)),
        "macro": {key: _r(v) for key, v in report.macro().items()},
        "weighted": {key: _r(v) for key, v in report.weighted().items()},
        "roc_auc_macro": _r(np.nanmean(rocs)) if not np.isnan(rocs).all() else None,
        "pr_auc_macro": _r(np.nanmean(prs)) if not np.isnan(prs).all() else None,
        "top_k": {str(j): _r(m.top_k_accuracy(y, probs, j)) for j in ks if j < k or j == 1},
        "per_class": per_class,
        "confusion_matrix": {"counts": cm.tolist(),
                             "normalized": np.round(m.normalize_confusion(cm), 6).tolist()},
    }
    if positive is not None:
        sens, spec = m.sensitivity_specificity(y, pred, positive)
        result["positive_class"] = {"name": classes[positive], "sensitivity": _r(sens),
                                    "specificity": _r(spec), "roc_auc": _r(rocs[positive]),
                                    "pr_auc": _r(prs[positive])}
    return result


def headline_metrics(full: dict[str, Any]) -> dict[str, float]:
    """The flat dict bundle.json's "metrics" gets (only defined values)."""
    flat: dict[str, Any] = {
        "accuracy": full.get("accuracy"),
        "balanced_accuracy": full.get("balanced_accuracy"),
        "macro_f1": full["macro"]["f1"],
        "weighted_f1": full["weighted"]["f1"],
        "macro_precision": full["macro"]["precision"],
        "macro_recall": full["macro"]["recall"],
        "mcc": full.get("mcc"),
        "roc_auc_macro": full.get("roc_auc_macro"),
        "pr_auc_macro": full.get("pr_auc_macro"),
    }
    for key, value in full.get("top_k", {}).items():
        if key != "1":
            flat[f"top{key}_accuracy"] = value
    positive = full.get("positive_class")
    if positive:
        flat["sensitivity"] = positive["sensitivity"]
        flat["specificity"] = positive["specificity"]
        flat["positive_roc_auc"] = positive["roc_auc"]
    return {k: float(v) for k, v in flat.items() if v is not None}


def _statistics(k: int, positive: int | None
                ) -> dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]]:
    def f1(y: np.ndarray, pred: np.ndarray, _: np.ndarray) -> float:
        return float(m.class_report(m.confusion_matrix(y, pred, k)).f1.mean())

    stats: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
        "accuracy": lambda y, pred, _: m.accuracy(y, pred),
        "balanced_accuracy": lambda y, pred, _: m.balanced_accuracy(y, pred, k),
        "macro_f1": f1,
        "mcc": lambda y, pred, _: m.matthews_corrcoef(m.confusion_matrix(y, pred, k)),
    }
    if positive is not None:
        stats["sensitivity"] = lambda y, pred, _: m.sensitivity_specificity(y, pred, positive)[0]
        stats["specificity"] = lambda y, pred, _: m.sensitivity_specificity(y, pred, positive)[1]
    return stats


def bootstrap_ci(labels: np.ndarray, probabilities: np.ndarray, *,
                 predictions: np.ndarray | None = None, positive: int | None = None,
                 n_boot: int = 1000, n_boot_auc: int = 200, level: float = 0.95,
                 seed: int = 0) -> dict[str, list[float | None]]:
    """Percentile bootstrap intervals of the headline metrics over resampled test images.

    AUC needs a sort per class and resample, so it gets fewer resamples (`n_boot_auc`).
    """
    y = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    pred = probs.argmax(axis=1) if predictions is None else np.asarray(predictions)
    k = probs.shape[1]
    if y.size == 0 or n_boot <= 0:
        return {}
    rng = np.random.default_rng(seed)
    stats = _statistics(k, positive)
    draws: dict[str, list[float]] = {name: [] for name in stats}
    draws["roc_auc_macro"] = []
    for b in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        yb, pb = y[idx], pred[idx]
        for name, fn in stats.items():
            draws[name].append(fn(yb, pb, probs[idx]))
        if b < n_boot_auc:
            rocs, _ = m.one_vs_rest_auc(yb, probs[idx])
            if not np.isnan(rocs).all():
                draws["roc_auc_macro"].append(float(np.nanmean(rocs)))
    tail = (1.0 - level) / 2.0 * 100.0
    out: dict[str, list[float | None]] = {}
    for name, values in draws.items():
        finite = np.asarray([v for v in values if not math.isnan(v)])
        if finite.size:
            low, high = np.percentile(finite, [tail, 100.0 - tail])
            out[name] = [_r(low), _r(high)]
    return out


def most_confused(cm: np.ndarray, classes: Sequence[str], top: int = 10
                  ) -> list[dict[str, Any]]:
    """Off-diagonal cells, largest first: (true, predicted, count, share of the true class)."""
    cm = np.asarray(cm)
    totals = cm.sum(axis=1)
    cells = [(int(cm[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes))
             if i != j and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": n,
             "share": _r(n / totals[i]) if totals[i] else None} for n, i, j in cells[:top]]
