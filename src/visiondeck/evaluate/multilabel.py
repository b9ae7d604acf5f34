"""Multi-label evaluation: per-label scores, label-set scores, thresholds chosen on validation.

A multi-label network answers one independent probability per label (a sigmoid per logit),
so there is no argmax and no confusion matrix. What is measured instead (numpy only, as
`metrics.py`, with scikit-learn as the tests' oracle):

- ranking quality, independent of any threshold: average precision per label, its mean
  over labels (macro mAP) and over every (image, label) pair (micro mAP); ROC-AUC likewise;
- decisions at the per-label thresholds: F1, precision, sensitivity and specificity per
  label, macro and micro F1, subset accuracy (the whole label set right) and Hamming loss
  (the share of wrong (image, label) decisions).

Probabilities are calibrated first: one temperature per label, fitted on the validation
logits by minimising that label's binary NLL (the single-label `fit_temperature`, on the
two-logit form [0, z], whose softmax is exactly sigmoid(z)). Thresholds are then *chosen*
on the calibrated validation probabilities (the F1-optimal one per label, or the highest
one reaching a target sensitivity) and only *measured* on test, as for the single-label
operating threshold; temperatures and thresholds travel in calibration.json and then in
the Bundle, where `Calibration.label_probabilities` applies the same temperatures.
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
    "bootstrap_label_rules",
    "bootstrap_multilabel",
    "calibration_json",
    "choose_thresholds",
    "evaluate_multilabel",
    "f1_threshold",
    "fit_label_temperatures",
    "label_ece",
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


def fit_label_temperatures(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One temperature per label minimising its binary NLL on (validation) logits.

    Reuses `evaluate.calibration.fit_temperature` on the two-logit form [0, z]: its
    softmax is sigmoid(z), so the same golden-section fit (and its rules: 1.0 when the
    label is perfectly separated or has nothing to fit on) serves both tasks."""
    from visiondeck.evaluate.calibration import fit_temperature

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    out = np.ones(z.shape[1] if z.ndim == 2 else 0, dtype=np.float64)
    for j in range(out.size):
        pair = np.stack([np.zeros_like(z[:, j]), z[:, j]], axis=1)
        out[j] = fit_temperature(pair, y[:, j])
    return out


def label_ece(labels: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """Expected calibration error of each label's yes/no answer (the single-label
    `reliability` on the two-class probabilities [1 - p, p]); NaN for no images."""
    from visiondeck.evaluate.calibration import reliability

    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if not y.shape[0]:
        return [float("nan")] * p.shape[1]
    return [reliability(np.stack([1.0 - p[:, j], p[:, j]], axis=1), y[:, j]).ece
            for j in range(p.shape[1])]


def choose_thresholds(labels: np.ndarray, probabilities: np.ndarray, *,
                      target_sensitivity: float | None = None,
                      label_targets: dict[int, float] | None = None
                      ) -> tuple[np.ndarray, list[int]]:
    """Per-label thresholds fitted on validation: F1-optimal, or (with a target) the
    highest reaching that sensitivity; `label_targets` (label index -> sensitivity, from a
    gate's `sensitivity[LABEL]` rules) overrides both for its labels. Returns (thresholds,
    labels left at the default because validation holds none of their positives)."""
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    chosen, defaulted = [], []
    for j in range(y.shape[1]):
        target = (label_targets or {}).get(j, target_sensitivity)
        value = (f1_threshold(y[:, j], p[:, j]) if target is None
                 else sensitivity_threshold(y[:, j], p[:, j], target))
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


def _label_statistic(metric: str, y: np.ndarray, d: np.ndarray, p: np.ndarray) -> float:
    """One label's gate metric (names of `gates.LABEL_GATE_METRICS`) on one resample."""
    tp, fp, fn, tn = _counts(y, d, None)
    if metric == "ap":
        return m.average_precision(y, p)
    if metric == "auc":
        return m.roc_auc(y, p)
    num, den = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp),
                "precision": (tp, tp + fp), "f1": (2 * tp, 2 * tp + fp + fn)}[metric]
    return float(num / den) if den else float("nan")


def bootstrap_label_rules(labels: np.ndarray, probabilities: np.ndarray,
                          thresholds: Sequence[float] | np.ndarray,
                          rules: Sequence[tuple[str, int]], *, n_boot: int = 1000,
                          n_boot_ap: int = 200, level: float = 0.95, seed: int = 0
                          ) -> list[list[float] | None]:
    """Percentile intervals of single labels' metrics, `(metric, label index)` each (the
    per-label gate rules), over the same image resampling as `bootstrap_multilabel`."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    decided = p >= np.asarray(thresholds, dtype=np.float64)[None, :]
    if not y.shape[0] or n_boot <= 0:
        return [None] * len(rules)
    rng = np.random.default_rng(seed)
    draws: list[list[float]] = [[] for _ in rules]
    for b in range(n_boot):
        idx = rng.integers(0, y.shape[0], y.shape[0])
        for k, (metric, j) in enumerate(rules):
            if metric in ("ap", "auc") and b >= n_boot_ap:
                continue
            draws[k].append(_label_statistic(metric, y[idx, j], decided[idx, j], p[idx, j]))
    tail = (1.0 - level) / 2.0 * 100.0
    out: list[list[float] | None] = []
    for values in draws:
        finite = np.asarray([v for v in values if not math.isnan(v)])
        if not finite.size:
            out.append(None)
            continue
        low, high = np.percentile(finite, [tail, 100.0 - tail])
        out.append([round(float(low), 6), round(float(high), 6)])
    return out


HEADLINE = ("map_macro", "map_micro", "roc_auc_macro", "f1_macro", "f1_micro",
            "subset_accuracy", "hamming_loss")


def _calibration_section(classes: list[str], temperatures: np.ndarray, labels: np.ndarray,
                         raw: np.ndarray, calibrated: np.ndarray) -> dict[str, Any]:
    """metrics.json "calibration": the temperatures and each label's ECE before/after."""
    before, after = label_ece(labels, raw), label_ece(labels, calibrated)
    return {
        "method": "temperature per label", "fit_on": "val",
        "temperatures": {c: round(float(t), 6) for c, t in zip(classes, temperatures,
                                                               strict=True)},
        "ece_before": dict(zip(classes, before, strict=True)),
        "ece_after": dict(zip(classes, after, strict=True)),
        "ece_macro_before": _nanmean(before), "ece_macro_after": _nanmean(after),
    }


def evaluate_multilabel(trained: Any, run_dir: Path, split: str = "test", *,
                        tta: bool = False, target_sensitivity: float | None = None,
                        out_dir: Path | None = None, n_boot: int = 1000,
                        batch_size: int = 256, seed: int = 0, report: bool = True,
                        gradcam_samples: int = 6, gradcam_method: str = "gradcam",
                        gate: str | None = None
                        ) -> tuple[dict[str, Any], Path | None]:
    """Score a multi-label run on its held-out split; write metrics.json, calibration.json
    (per-label temperatures, then thresholds on the calibrated validation probabilities),
    predictions.csv and (with `report`) report.html. `gate`: rules of `evaluate.gates`,
    checked on validation and on `split` (metrics.json "gate"). Returns the content of
    metrics.json and the report's path."""
    from visiondeck.evaluate import gates as gating
    from visiondeck.evaluate.predict import predict_run_subsets

    classes = list(trained.classes)
    rules = gating.parse_gate(gate) if gate else []
    gating.check_rules(rules, multilabel=True, classes=classes)
    subsets = predict_run_subsets(trained, tta=tta, batch_size=batch_size)
    val, scored = subsets["val"], subsets[split]
    # order matters: temperatures first, then thresholds on the calibrated probabilities
    # rounded as calibration.json stores them, so the Bundle applies exactly these
    temperatures = np.round(fit_label_temperatures(val.logits, val.labels), 6)
    val_probs = sigmoid(np.asarray(val.logits, dtype=np.float64) / temperatures)
    probs = sigmoid(np.asarray(scored.logits, dtype=np.float64) / temperatures)
    thresholds, defaulted = choose_thresholds(
        val.labels, val_probs, target_sensitivity=target_sensitivity,
        label_targets=gating.label_sensitivity_targets(rules, classes))
    full = multilabel_metrics(scored.labels, probs, classes, thresholds)
    val_full = multilabel_metrics(val.labels, val_probs, classes, thresholds)
    info = json.loads((Path(run_dir) / "run.json").read_text())
    chosen = {name: round(float(t), 6) for name, t in zip(classes, thresholds, strict=True)}
    ci95 = bootstrap_multilabel(scored.labels, probs, thresholds, n_boot=n_boot, seed=seed)
    gate_section = None
    if rules:
        per_label = [r for r in rules if r.label is not None]
        intervals = bootstrap_label_rules(
            scored.labels, probs, thresholds,
            [(r.metric, classes.index(r.label)) for r in per_label], n_boot=n_boot, seed=seed)
        gate_ci = {**ci95, **{r.key: ci for r, ci in zip(per_label, intervals, strict=True)
                              if ci is not None}}
        gate_section = gating.check_gate(rules, val_full, full, gate_ci, test_split=split,
                                         threshold={"label_thresholds": chosen,
                                                    "chosen_on": "val"})
    metrics = clean_json({
        "format_version": 1, "task": "multilabel", "run": str(Path(run_dir)), "split": split,
        "split_id": (info.get("split") or {}).get("id"), "classes": classes, "tta": tta,
        "n": len(scored), "n_val": len(val), "skipped": scored.skipped,
        "headline": {k: full[k] for k in HEADLINE},
        "ci95": ci95,
        "thresholds": {"method": "f1" if target_sensitivity is None else "sensitivity",
                       "target_sensitivity": target_sensitivity, "fit_on": "val",
                       "on": "calibrated probabilities", "values": chosen,
                       "label_targets": {classes[j]: t for j, t in
                                         gating.label_sensitivity_targets(rules,
                                                                          classes).items()},
                       "defaulted": [classes[j] for j in defaulted]},
        "calibration": _calibration_section(classes, temperatures, scored.labels,
                                            sigmoid(scored.logits), probs),
        "val": {k: val_full[k] for k in HEADLINE},
        **{k: v for k, v in full.items() if k != "n"},
        **({"gate": gate_section} if gate_section is not None else {}),
    })
    calibration = calibration_json(chosen, metrics["calibration"]["temperatures"])
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


def calibration_json(thresholds: dict[str, float], temperatures: dict[str, float]
                     ) -> dict[str, Any]:
    """calibration.json of a multi-label run (the form `export.calibration.Calibration`
    reads): per-label temperatures and thresholds, no global temperature."""
    return {"temperature": 1.0, "reject": None, "decision_threshold": None,
            "label_thresholds": dict(thresholds), "label_temperatures": dict(temperatures)}


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
