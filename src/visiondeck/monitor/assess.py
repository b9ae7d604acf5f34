"""`assess(reference, window)`: per-feature drift scores, thresholds and alarms, in one object.

The features and their tests (see `stats.py` for the statistics and their thresholds):

| feature | method | what moves it |
| --- | --- | --- |
| brightness, contrast | psi, ks | darker/lighter or flatter pictures, another camera |
| size, aspect | psi | another image source (resolution, crop) |
| confidence | psi, ks, mean_drop | the model is less sure: the usual first sign of trouble |
| class_mix | psi over classes | the world (or the model's view of it) changed its mix |
| softmax | ks_max | the probability vector's distribution (Bonferroni over classes) |
| embedding | ks_max | what the network sees: 8 PCA components, Bonferroni over them |
| embedding_residual | ks | inputs off the reference's embedding subspace (other data) |

An alarm needs at least `min_window` live predictions: below that nothing can be said, and
the assessment's status says "warming_up". Live accuracy (from labelled predictions) is
reported beside the drift, and counts as an alarm only when `min_accuracy` is set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from visiondeck.monitor.reference import ReferenceStats
from visiondeck.monitor.stats import (
    FeatureSummary,
    finite,
    ks_distance,
    ks_threshold,
    mean_drop_threshold,
    psi,
    psi_threshold,
)
from visiondeck.monitor.window import WindowData

__all__ = ["DriftAssessment", "DriftThresholds", "FeatureDrift", "LiveAccuracy", "assess",
           "live_accuracy"]


@dataclass(frozen=True)
class DriftThresholds:
    """How sure and how large a shift must be to raise an alarm."""

    alpha: float = 0.001  # false-alarm rate per test (KS, PSI null, mean drop)
    psi: float = 0.25  # the usual "significant shift" PSI, raised for small samples
    ks_floor: float = 0.1  # a KS distance below this never alarms
    confidence_drop: float = 0.05  # a smaller drop of mean confidence never alarms
    min_window: int = 30  # live predictions needed before any alarm
    min_accuracy: float | None = None  # live accuracy below this alarms (None: report only)
    min_labelled: int = 20  # labelled predictions needed before accuracy can alarm


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    method: str
    score: float
    threshold: float
    alarm: bool
    n: int  # live values the score was computed on

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "method": self.method, "score": _num(self.score),
                "threshold": _num(self.threshold), "alarm": self.alarm, "n": self.n}


@dataclass(frozen=True)
class LiveAccuracy:
    labelled: int
    correct: int
    accuracy: float | None
    reference: float | None = None  # the model's accuracy on the reference images
    unknown_labels: int = 0  # labels naming no class of the model (not counted)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftAssessment:
    status: str  # no_data | warming_up | ok | drift (any alarm, accuracy included)
    window_size: int
    reference_n: int
    reference_id: str
    features: tuple[FeatureDrift, ...]
    alarm: bool
    class_mix_reference: dict[str, float]
    class_mix_live: dict[str, float]
    confidence_reference_mean: float | None
    confidence_live_mean: float | None
    live_accuracy: LiveAccuracy
    accuracy_alarm: bool = False
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    @property
    def alarms(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.alarm]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "window_size": self.window_size,
            "reference": {"n": self.reference_n, "id": self.reference_id},
            "drift": [f.to_dict() for f in self.features], "alarm": self.alarm,
            "accuracy_alarm": self.accuracy_alarm,
            "class_mix": {"reference": self.class_mix_reference, "live": self.class_mix_live},
            "confidence": {"reference_mean": self.confidence_reference_mean,
                           "live_mean": self.confidence_live_mean},
            "live_accuracy": self.live_accuracy.to_dict(),
            "thresholds": asdict(self.thresholds),
        }


def _num(value: float) -> float | None:
    """JSON-safe number (an infinite threshold means "cannot alarm yet")."""
    return round(float(value), 6) if math.isfinite(value) else None


def live_accuracy(pairs: Iterable[tuple[str, str]], classes: Iterable[str],
                  reference: float | None = None) -> LiveAccuracy:
    """Accuracy of (predicted, true label) pairs; labels naming no class are set aside."""
    known = set(classes)
    labelled = correct = unknown = 0
    for predicted, label in pairs:
        if label not in known:
            unknown += 1
            continue
        labelled += 1
        correct += predicted == label
    return LiveAccuracy(labelled, correct, round(correct / labelled, 6) if labelled else None,
                        reference, unknown)


def _window_accuracy(reference: ReferenceStats, window: WindowData) -> LiveAccuracy:
    if window.labels is None:
        return LiveAccuracy(0, 0, None, reference.accuracy)
    known = window.labels >= 0
    labelled = int(known.sum())
    correct = int((window.labels[known] == window.predicted[known]).sum())
    return LiveAccuracy(labelled, correct, round(correct / labelled, 6) if labelled else None,
                        reference.accuracy, int((window.labels == -2).sum()))


def assess(reference: ReferenceStats, window: WindowData,
           thresholds: DriftThresholds | None = None,
           accuracy: LiveAccuracy | None = None) -> DriftAssessment:
    """Compare a live window with the reference; `accuracy` overrides the window's labels."""
    t = thresholds or DriftThresholds()
    n = len(window)
    rows: list[FeatureDrift] = []

    def add(feature: str, method: str, score: float, threshold: float, count: int) -> None:
        ready = count >= t.min_window
        rows.append(FeatureDrift(feature, method, float(score), float(threshold),
                                 bool(ready and score > threshold), count))

    def scalar(name: str, methods: tuple[str, ...]) -> None:
        summary = reference.features.get(name)
        values = finite(window.features.get(name, np.empty(0)))
        if summary is None or values.size == 0:
            return
        if "psi" in methods:
            add(name, "psi", psi(summary.counts, summary.bin_counts(values)),
                psi_threshold(values.size, summary.n, summary.bins, base=t.psi, alpha=t.alpha),
                values.size)
        if "ks" in methods:
            add(name, "ks", ks_distance(summary, values),
                ks_threshold(values.size, summary.n, alpha=t.alpha, floor=t.ks_floor),
                values.size)
        if "mean_drop" in methods:
            add(name, "mean_drop", summary.mean - float(values.mean()),
                mean_drop_threshold(summary.std, summary.n, float(values.std()), values.size,
                                    alpha=t.alpha, floor=t.confidence_drop), values.size)

    for name in ("brightness", "contrast"):
        scalar(name, ("psi", "ks"))
    for name in ("size", "aspect"):
        scalar(name, ("psi",))
    scalar("confidence", ("psi", "ks", "mean_drop"))

    k = len(reference.classes)
    valid = window.predicted[(window.predicted >= 0) & (window.predicted < k)]
    live_counts = np.bincount(valid, minlength=k)
    if valid.size:
        add("class_mix", "psi", psi(reference.class_counts, live_counts),
            psi_threshold(valid.size, reference.n, k, base=t.psi, alpha=t.alpha), valid.size)
    if reference.probabilities is not None and window.probabilities is not None:
        _ks_max(add, "softmax", reference.probabilities, window.probabilities, t)
    e = reference.embedding
    if e is not None and window.projections is not None:
        _ks_max(add, "embedding", e.projections, window.projections, t)
        if window.residuals is not None:
            values = finite(window.residuals)
            if values.size:
                add("embedding_residual", "ks", ks_distance(e.residual, values),
                    ks_threshold(values.size, e.residual.n, alpha=t.alpha, floor=t.ks_floor),
                    values.size)

    acc = accuracy or _window_accuracy(reference, window)
    accuracy_alarm = bool(t.min_accuracy is not None and acc.accuracy is not None
                          and acc.labelled >= t.min_labelled and acc.accuracy < t.min_accuracy)
    alarm = any(r.alarm for r in rows) or accuracy_alarm
    status = ("drift" if alarm else "no_data" if n == 0 else "warming_up"
              if n < t.min_window else "ok")
    confidence = finite(window.features.get("confidence", np.empty(0)))
    total = max(1, int(live_counts.sum()))
    return DriftAssessment(
        status=status, window_size=n, reference_n=reference.n, reference_id=reference.id,
        features=tuple(rows), alarm=alarm,
        class_mix_reference={c: round(v, 6) for c, v in reference.class_shares.items()},
        class_mix_live={c: round(int(live_counts[i]) / total, 6)
                        for i, c in enumerate(reference.classes)},
        confidence_reference_mean=round(reference.features["confidence"].mean, 6)
        if "confidence" in reference.features else None,
        confidence_live_mean=round(float(confidence.mean()), 6) if confidence.size else None,
        live_accuracy=acc, accuracy_alarm=accuracy_alarm, thresholds=t)


def _ks_max(add: Any, feature: str, summaries: tuple[FeatureSummary, ...], live: np.ndarray,
            t: DriftThresholds) -> None:
    """One row for a vector feature: the largest per-dimension KS, Bonferroni-corrected."""
    if live.ndim != 2 or live.shape[1] != len(summaries):
        return
    scores, counts = [], []
    for j, summary in enumerate(summaries):
        values = finite(live[:, j])
        if values.size:
            scores.append(ks_distance(summary, values))
            counts.append(values.size)
    if not scores:
        return
    count = min(counts)
    threshold = ks_threshold(count, min(s.n for s in summaries), alpha=t.alpha,
                             tests=len(summaries), floor=t.ks_floor)
    add(feature, "ks_max", max(scores), threshold, count)
