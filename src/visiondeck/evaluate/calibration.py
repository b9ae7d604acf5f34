"""Confidence you can act on: temperature scaling, calibration error, rejection, thresholds.

Everything here is fitted on the *validation* split and only measured on test, so the test
numbers stay honest. The fitted values are what `calibration.json` stores and what export
copies into bundle.json, where `predict` and the API apply them:

- temperature T: probabilities = softmax(logits / T), T minimising validation NLL;
- reject rule: "unknown" when the top probability is below a threshold (max_prob) or the
  energy −T·logsumexp(logits/T) is above one (energy), set so that a chosen share of
  in-distribution validation images (95 % by default) is still answered;
- decision threshold (binary tasks): the positive class is predicted when its probability
  reaches the threshold picked for a target sensitivity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visiondeck.evaluate.metrics import sensitivity_specificity

__all__ = [
    "Reliability",
    "ThresholdChoice",
    "energy_score",
    "expected_calibration_error",
    "fit_decision_threshold",
    "fit_reject_threshold",
    "fit_temperature",
    "negative_log_likelihood",
    "reject_mask",
    "reliability",
    "softmax",
]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0
                            ) -> float:
    """Mean −log p(true class) under softmax(logits / T)."""
    y = np.asarray(labels, dtype=np.int64)
    return float(-_log_softmax(logits, temperature)[np.arange(y.size), y].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (
        0.05, 20.0), iterations: int = 80) -> float:
    """The T in `bounds` minimising NLL (golden-section search on 1/T).

    NLL is convex in the inverse temperature (log-sum-exp is convex, the true-class term
    linear), so the search finds the global minimum on the interval. Returns 1.0 when there
    is nothing to fit on, or when every image is already right (see below).
    """
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0 or (np.asarray(logits).argmax(axis=1) == y).all():
        # every image right: NLL keeps falling as T → 0, so the "fit" would only be the
        # lower bound; without a single mistake there is no evidence to sharpen on
        return 1.0
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0

    def loss(beta: float) -> float:
        return negative_log_likelihood(logits, y, 1.0 / beta)

    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    beta = (a + b) / 2.0
    # keep T = 1 when scaling does not help measurably (e.g. a perfectly separated set)
    return 1.0 if loss(1.0) <= loss(beta) + 1e-12 else float(1.0 / beta)


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram: per confidence bin, how often the top class was right."""

    edges: np.ndarray  # (B + 1,)
    confidence: np.ndarray  # (B,) mean top probability in the bin (NaN when empty)
    accuracy: np.ndarray  # (B,) share correct in the bin (NaN when empty)
    counts: np.ndarray  # (B,)
    ece: float

    def to_dict(self) -> dict:
        def clean(values: np.ndarray) -> list:
            return [None if np.isnan(v) else round(float(v), 6) for v in values]

        return {"edges": [round(float(e), 6) for e in self.edges],
                "confidence": clean(self.confidence), "accuracy": clean(self.accuracy),
                "counts": [int(c) for c in self.counts], "ece": round(self.ece, 6)}


def reliability(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> Reliability:
    """Equal-width bins of top-class confidence; ECE = Σ (n_b / N) · |acc_b − conf_b|.

    Bins are right-closed ((0, 1/B], (1/B, 2/B], ...), as in Guo et al. 2017.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        mean_acc = np.where(counts > 0, acc_sum / counts, np.nan)
    total = max(int(counts.sum()), 1)
    gaps = np.where(counts > 0, np.abs(np.nan_to_num(mean_acc) - np.nan_to_num(mean_conf)), 0.0)
    return Reliability(edges, mean_conf, mean_acc, counts, float((counts / total) @ gaps))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               n_bins: int = 15) -> float:
    return reliability(probabilities, labels, n_bins).ece


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """−T·logsumexp(logits / T) per row; lower = more like the training data (Liu et al.)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    top = z.max(axis=1)
    return -float(temperature) * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def _score(logits: np.ndarray, method: str, temperature: float) -> np.ndarray:
    """Higher = more in-distribution, for both methods."""
    if method == "max_prob":
        return softmax(logits, temperature).max(axis=1)
    if method == "energy":
        return -energy_score(logits, temperature)
    raise ValueError(f"unknown reject method {method!r}; use max_prob or energy")


def fit_reject_threshold(logits: np.ndarray, temperature: float = 1.0, *,
                         method: str = "max_prob", keep: float = 0.95) -> float:
    """Threshold that still answers `keep` of these (in-distribution validation) images.

    max_prob: unknown when top probability < threshold; energy: unknown when energy >
    threshold (the contract of bundle.json's `calibration.reject`).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], not {keep}")
    score = _score(logits, method, temperature)
    if score.size == 0:
        raise ValueError("no validation images to set the reject threshold on")
    cut = float(np.quantile(score, 1.0 - keep, method="lower"))
    return cut if method == "max_prob" else -cut


def reject_mask(logits: np.ndarray, method: str, threshold: float, temperature: float = 1.0
                ) -> np.ndarray:
    """True for the rows the rule answers "unknown" (same rule as `export.bundle.RejectRule`)."""
    if method == "max_prob":
        return softmax(logits, temperature).max(axis=1) < threshold
    return energy_score(logits, temperature) > threshold


@dataclass(frozen=True)
class ThresholdChoice:
    positive: int
    threshold: float
    target_sensitivity: float | None
    val_sensitivity: float
    val_specificity: float


def fit_decision_threshold(positive_scores: np.ndarray, labels: np.ndarray, positive: int, *,
                           target_sensitivity: float | None = None) -> ThresholdChoice:
    """Binary tasks: the probability threshold for the positive class, chosen on validation.

    With `target_sensitivity`: the highest threshold whose validation sensitivity reaches
    the target (the most specific one that still finds enough positives). Without: the one
    maximising Youden's J = sensitivity + specificity − 1.
    """
    s = np.asarray(positive_scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if not (y == positive).any() or (y == positive).all():
        raise ValueError("the validation split needs both positive and negative images")
    candidates = np.unique(np.r_[s, 0.0])[::-1]  # highest first
    best: tuple[float, float, float] | None = None
    best_j = -np.inf
    for threshold in candidates:
        predicted = np.where(s >= threshold, positive, -1)
        sens, spec = sensitivity_specificity(y, predicted, positive)
        if target_sensitivity is not None:
            if sens >= target_sensitivity:
                best = (float(threshold), sens, spec)
                break
        elif sens + spec - 1.0 > best_j:
            best_j, best = sens + spec - 1.0, (float(threshold), sens, spec)
    assert best is not None  # threshold 0 predicts every image positive: sensitivity 1
    return ThresholdChoice(positive, best[0], target_sensitivity, best[1], best[2])
