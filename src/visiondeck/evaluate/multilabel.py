"""Multi-label evaluation: per-label scores, label-set scores, thresholds chosen on validation.

A multi-label network answers one independent probability per label (a sigmoid per logit),
so there is no argmax and no confusion matrix. What is measured instead (numpy only, as
`metrics.py`, with scikit-learn as the tests' oracle):

- ranking quality, independent of any threshold: average precision per label, its mean
  over labels (macro mAP) and over every (image, label) pair (micro mAP); ROC-AUC likewise;
- decisions at the per-label thresholds: F1, precision, sensitivity and specificity per
  label, macro and micro F1, subset accuracy (the whole label set right) and Hamming loss
  (the share of wrong (image, label) decisions).

Thresholds are *chosen* on the validation files (the F1-optimal one per label, or the
highest one reaching a target sensitivity) and only *measured* on test, as for the
single-label operating threshold; they travel in calibration.json and then in the Bundle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.evaluate import metrics as m
from visiondeck.evaluate.scores import clean_json

__all__ = [
    "DEFAULT_THRESHOLD",
    "bootstrap_multilabel",
    "choose_thresholds",
    "evaluate_multilabel",
    "f1_threshold",
    "multilabel_metrics",
    "sensitivity_threshold",
    "sigmoid",
]

#: the threshold of a label whose validation files give nothing to choose from
DEFAULT_THRESHOLD = 0.5


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float64, stable for any logit scale."""
    z = np.asarray(logits, dtype=np.float64)
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))),
                    np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def _counts(y: np.ndarray, decided: np.ndarray, axis: int | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    y, d = y.astype(bool), decided.astype(bool)
    tp = (y & d).sum(axis=axis)
    fp = (~y & d).sum(axis=axis)
    fn = (y & ~d).sum(axis=axis)
    tn = (~y & ~d).sum(axis=axis)
    return tp, fp, fn, tn


def _ratio(num: Any, den: Any) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def multilabel_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str],
                       thresholds: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Every score of a multi-label evaluation (see the module doc).

    labels: (N, K) 0/1; probabilities: (N, K); thresholds: (K,), a label is decided present
    when its probability is at least its threshold. A label without positives (or without
    negatives) has NaN AP/AUC, skipped by the macro means.
    """
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    decided = p >= t[None, :]
    tp, fp, fn, tn = _counts(y, decided, axis=0)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    specificity, f1 = _ratio(tn, tn + fp), _ratio(2 * tp, 2 * tp + fp + fn)
    ap = [m.average_precision(y[:, j], p[:, j]) for j in range(y.shape[1])]
    auc = [m.roc_auc(y[:, j], p[:, j]) for j in range(y.shape[1])]
    mtp, mfp, mfn, _ = _counts(y, decided, axis=None)
    per_label = {
        name: {"support": int(y[:, j].sum()), "threshold": float(t[j]),
               "average_precision": ap[j], "roc_auc": auc[j], "f1": float(f1[j]),
               "precision": float(precision[j]), "sensitivity": float(recall[j]),
               "specificity": float(specificity[j])}
        for j, name in enumerate(classes)
    }
    return {
        "n": int(y.shape[0]),
        "map_macro": _nanmean(ap),
        "map_micro": m.average_precision(y.ravel(), p.ravel()) if y.size else float("nan"),
        "roc_auc_macro": _nanmean(auc),
        "roc_auc_micro": m.roc_auc(y.ravel(), p.ravel()) if y.size else float("nan"),
        "f1_macro": float(f1.mean()) if f1.size else float("nan"),
        "f1_micro": float(_ratio(2 * mtp, 2 * mtp + mfp + mfn)),
        "precision_micro": float(_ratio(mtp, mtp + mfp)),
        "sensitivity_micro": float(_ratio(mtp, mtp + mfn)),
        "subset_accuracy": float((decided == y).all(axis=1).mean()) if y.size else float("nan"),
        "hamming_loss": float((decided != y).mean()) if y.size else float("nan"),
        "per_label": per_label,
    }


def _margin(scores: np.ndarray, cut: float) -> float:
    """`cut` lowered to halfway towards the next lower score: the same decisions on the
    validation scores, with room for the test scores that fall just under `cut`."""
    below = scores[scores < cut]
    return float((cut + below.max()) / 2.0) if below.size else float(cut)


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The threshold whose decisions `score >= t` give the highest F1 (ties: the highest
    such cut), placed halfway to the next lower score (`_margin`). None without
    positives."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return None
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tps = np.cumsum(y_sorted)
    fps = np.cumsum(~y_sorted)
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # end of each tie run
    tp, fp = tps[last], fps[last]
    f1 = _ratio(2 * tp, 2 * tp + fp + (y.sum() - tp))
    best = int(np.flatnonzero(f1 == f1.max())[0])  # first = highest threshold
    return _margin(s, float(s_sorted[last[best]]))


def sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, target: float
                          ) -> float | None:
    """The highest cut whose decisions `score >= t` reach sensitivity `target`, placed
    halfway to the next lower score (`_margin`). None without positives."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = np.sort(s[y])[::-1]
    if not positives.size:
        return None
    needed = max(1, math.ceil(target * positives.size - 1e-9))
    return _margin(s, float(positives[needed - 1]))


def choose_thresholds(labels: np.ndarray, probabilities: np.ndarray, *,
                      target_sensitivity: float | None = None
                      ) -> tuple[np.ndarray, list[int]]:
    """Per-label thresholds fitted on validation: F1-optimal, or (with a target) the
    highest reaching that sensitivity. Returns (thresholds, labels left at the default
    because validation holds none of their positives)."""
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    chosen, defaulted = [], []
    for j in range(y.shape[1]):
        value = (f1_threshold(y[:, j], p[:, j]) if target_sensitivity is None
                 else sensitivity_threshold(y[:, j], p[:, j], target_sensitivity))
        if value is None:
            defaulted.append(j)
            value = DEFAULT_THRESHOLD
        chosen.append(value)
    return np.asarray(chosen, dtype=np.float64), defaulted


_STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "f1_macro": lambda y, d, p: float(_ratio(*_f1_parts(y, d, 0)).mean()),
    "f1_micro": lambda y, d, p: float(_ratio(*_f1_parts(y, d, None))),
    "subset_accuracy": lambda y, d, p: float((d == y).all(axis=1).mean()),
    "hamming_loss": lambda y, d, p: float((d != y).mean()),
}


def _f1_parts(y: np.ndarray, d: np.ndarray, axis: int | None) -> tuple[Any, Any]:
    tp, fp, fn, _ = _counts(y, d, axis)
    return 2 * tp, 2 * tp + fp + fn


def bootstrap_multilabel(labels: np.ndarray, probabilities: np.ndarray,
                         thresholds: Sequence[float] | np.ndarray, *, n_boot: int = 1000,
                         n_boot_ap: int = 200, level: float = 0.95, seed: int = 0
                         ) -> dict[str, list[float]]:
    """Percentile bootstrap intervals over resampled images, as `scores.bootstrap_ci`:
    the threshold metrics with `n_boot` resamples, mAP and ROC-AUC (a sort per label) with
    `n_boot_ap`."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    decided = p >= np.asarray(thresholds, dtype=np.float64)[None, :]
    if not y.shape[0] or n_boot <= 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in (*_STATISTICS, "map_macro",
                                                           "map_micro", "roc_auc_macro")}
    for b in range(n_boot):
        idx = rng.integers(0, y.shape[0], y.shape[0])
        yb, db = y[idx], decided[idx]
        for name, fn in _STATISTICS.items():
            draws[name].append(fn(yb, db, p[idx]))
        if b < n_boot_ap:
            pb = p[idx]
            draws["map_macro"].append(_nanmean([m.average_precision(yb[:, j], pb[:, j])
                                                for j in range(y.shape[1])]))
            draws["map_micro"].append(m.average_precision(yb.ravel(), pb.ravel()))
            draws["roc_auc_macro"].append(_nanmean([m.roc_auc(yb[:, j], pb[:, j])
                                                    for j in range(y.shape[1])]))
    tail = (1.0 - level) / 2.0 * 100.0
    out: dict[str, list[float]] = {}
    for name, values in draws.items():
        finite = np.asarray([v for v in values if not math.isnan(v)])
        if finite.size:
            low, high = np.percentile(finite, [tail, 100.0 - tail])
            out[name] = [round(float(low), 6), round(float(high), 6)]
    return out


HEADLINE = ("map_macro", "map_micro", "roc_auc_macro", "f1_macro", "f1_micro",
            "subset_accuracy", "hamming_loss")


def evaluate_multilabel(trained: Any, run_dir: Path, split: str = "test", *,
                        tta: bool = False, target_sensitivity: float | None = None,
                        out_dir: Path | None = None, n_boot: int = 1000,
                        batch_size: int = 256, seed: int = 0, report: bool = True,
                        gradcam_samples: int = 6, gradcam_method: str = "gradcam"
                        ) -> tuple[dict[str, Any], Path | None]:
    """Score a multi-label run on its held-out split; write metrics.json, calibration.json
    (the per-label thresholds, fitted on validation), predictions.csv and (with `report`)
    report.html. Returns the content of metrics.json and the report's path."""
    from visiondeck.evaluate.predict import predict_run_subsets

    classes = list(trained.classes)
    subsets = predict_run_subsets(trained, tta=tta, batch_size=batch_size)
    val, scored = subsets["val"], subsets[split]
    val_probs, probs = sigmoid(val.logits), sigmoid(scored.logits)
    thresholds, defaulted = choose_thresholds(val.labels, val_probs,
                                              target_sensitivity=target_sensitivity)
    full = multilabel_metrics(scored.labels, probs, classes, thresholds)
    val_full = multilabel_metrics(val.labels, val_probs, classes, thresholds)
    info = json.loads((Path(run_dir) / "run.json").read_text())
    chosen = {name: round(float(t), 6) for name, t in zip(classes, thresholds, strict=True)}
    metrics = clean_json({
        "format_version": 1, "task": "multilabel", "run": str(Path(run_dir)), "split": split,
        "split_id": (info.get("split") or {}).get("id"), "classes": classes, "tta": tta,
        "n": len(scored), "n_val": len(val), "skipped": scored.skipped,
        "headline": {k: full[k] for k in HEADLINE},
        "ci95": bootstrap_multilabel(scored.labels, probs, thresholds, n_boot=n_boot,
                                     seed=seed),
        "thresholds": {"method": "f1" if target_sensitivity is None else "sensitivity",
                       "target_sensitivity": target_sensitivity, "fit_on": "val",
                       "values": chosen,
                       "defaulted": [classes[j] for j in defaulted]},
        "val": {k: val_full[k] for k in HEADLINE},
        **{k: v for k, v in full.items() if k != "n"},
    })
    calibration = {"temperature": 1.0, "reject": None, "decision_threshold": None,
                   "label_thresholds": chosen}
    target = out_dir or Path(run_dir) / "evaluation" / ("" if split == "test" else split)
    target.mkdir(parents=True, exist_ok=True)
    (target / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n",
                                         encoding="utf-8")
    if split == "test":
        (target / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n",
                                                 encoding="utf-8")
    _write_predictions(target / "predictions.csv", scored, probs, thresholds, classes)
    written = None
    if report:
        from visiondeck.evaluate.multilabel_report import write_multilabel_report

        written = write_multilabel_report(metrics, target, trained=trained, scored=scored,
                                          probs=probs, run_dir=Path(run_dir),
                                          gradcam_samples=gradcam_samples,
                                          gradcam_method=gradcam_method, seed=seed)
    return metrics, written


def _write_predictions(path: Path, scored: Any, probs: np.ndarray, thresholds: np.ndarray,
                       classes: list[str]) -> None:
    """One row per file: true and predicted label sets, then each label's probability."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["relpath", "labels", "predicted", "exact",
                         *(f"p_{name}" for name in classes)])
        for i, relpath in enumerate(scored.relpaths):
            truth = scored.labels[i].astype(bool)
            decided = probs[i] >= thresholds
            writer.writerow([relpath,
                             "|".join(c for c, on in zip(classes, truth, strict=True) if on),
                             "|".join(c for c, on in zip(classes, decided, strict=True) if on),
                             int((truth == decided).all()),
                             *(f"{v:.6f}" for v in probs[i])])
