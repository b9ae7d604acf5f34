"""Drift statistics in numpy: a compact summary of a reference sample, PSI and the KS distance.

A reference sample (say 2,000 held-out images) is kept as a `FeatureSummary`: its 101
percentiles, its decile bin edges and the counts of the sample in those bins. That is enough
for both tests monitoring uses, without storing the sample:

- **PSI** (population stability index) over equal-frequency bins of the reference, plus a
  bin below its minimum and one above its maximum, so a shift outside the range the model
  was checked on always shows. Counts are smoothed by half a count (Jeffreys), so an empty
  bin never divides by zero. The usual rule reads PSI > 0.25 as a significant shift; for
  small windows PSI's own sampling noise exceeds that (under no drift PSI ≈
  (1/n + 1/m)·χ²(B−1)), so `psi_threshold` raises the bar to that null's 99.9th percentile.
- **Kolmogorov-Smirnov distance** D = sup |F_live − F_ref|, with F_ref read from the
  percentiles (within 0.01 of the sample's ECDF: the percentiles are sample values, taken
  with numpy's "inverted_cdf" rule). `ks_threshold` is the asymptotic two-sample critical
  value at level α, never below a floor (a significant but tiny shift is not worth a page).

Both work for discrete features too (an image size that is always 28×28): the maximum is a
bin of its own, so a new size lands in the "above" bin.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "QUANTILE_LEVELS", "FeatureSummary", "chi2_quantile", "finite", "ks_distance", "ks_threshold",
    "ks_two_sample", "mean_drop_threshold", "psi", "psi_threshold", "rounded", "significant",
]  # fmt: skip

QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)
_DECILES = np.linspace(0.0, 1.0, 11)


def rounded(values: Any, digits: int = 6) -> list[float]:
    """Floats with `digits` significant digits (keeps reference.json small and stable)."""
    return significant(np.asarray(values, dtype=np.float64).ravel(), digits).tolist()


def finite(values: Any) -> np.ndarray:
    """The finite values of `values` as float64 (missing statistics are NaN and skipped)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def significant(values: np.ndarray, digits: int = 6) -> np.ndarray:
    """Values rounded to `digits` significant digits, as the stored summaries are.

    Reference and live values both go through this before they are binned or compared, so
    values closer than the stored precision are ties on both sides (a saturated confidence
    of 0.99999994 and a served 1.0 are the same number; otherwise the two would fall on
    opposite sides of a stored edge of 1.0).
    """
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(x)))
    scale = np.power(10.0, np.where(np.isfinite(magnitude), digits - 1 - magnitude, 0.0))
    return np.round(x * scale) / scale


@dataclass(frozen=True)
class FeatureSummary:
    """A reference sample of one scalar feature, summarised for PSI and KS."""

    n: int
    mean: float
    std: float
    quantiles: tuple[float, ...]  # at QUANTILE_LEVELS (0 %, 1 %, ... 100 %)
    edges: tuple[float, ...]  # the distinct deciles: the PSI bin edges
    counts: tuple[int, ...]  # the reference sample per bin (len(edges) + 2 bins)

    @classmethod
    def from_values(cls, values: Any) -> FeatureSummary:
        sample = significant(finite(values))
        if sample.size == 0:
            raise ValueError("cannot summarise a feature with no finite value")
        quantiles = np.quantile(sample, QUANTILE_LEVELS, method="inverted_cdf")
        edges = np.unique(np.quantile(sample, _DECILES, method="inverted_cdf"))
        summary = cls(int(sample.size), float(sample.mean()), float(sample.std()),
                      tuple(rounded(quantiles)), tuple(rounded(edges)), ())
        counts = summary.bin_counts(sample)
        return cls(summary.n, summary.mean, summary.std, summary.quantiles, summary.edges,
                   tuple(int(c) for c in counts))

    @property
    def bins(self) -> int:
        return len(self.edges) + 2

    def bin_counts(self, values: Any) -> np.ndarray:
        """How many of `values` fall in each bin: below min, the deciles, = max, above max."""
        x = significant(finite(values))
        edges = np.asarray(self.edges)
        index = np.searchsorted(edges, x, side="right")  # 0: below; i: [e(i-1), e(i)); m: >= max
        index = np.where(x > edges[-1], len(edges) + 1, index)
        return np.bincount(index, minlength=self.bins)

    def cdf(self, x: np.ndarray, *, left: bool = False) -> np.ndarray:
        """F_ref at `x` (or its left limit), from the percentiles (error below 0.01)."""
        q = np.asarray(self.quantiles)
        count = np.searchsorted(q, x, side="left" if left else "right")
        return np.clip((count - 1) / (len(q) - 1), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": rounded([self.mean])[0], "std": rounded([self.std])[0],
                "quantiles": list(self.quantiles), "edges": list(self.edges),
                "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeatureSummary:
        quantiles = tuple(float(v) for v in raw["quantiles"])
        edges = tuple(float(v) for v in raw["edges"])
        counts = tuple(int(c) for c in raw["counts"])
        if len(quantiles) != len(QUANTILE_LEVELS) or not edges or len(counts) != len(edges) + 2:
            raise ValueError("a feature summary needs 101 quantiles, edges and len(edges)+2 "
                             "counts")
        if any(b < a for a, b in itertools.pairwise(quantiles)):
            raise ValueError("feature quantiles must be sorted")
        return cls(int(raw["n"]), float(raw["mean"]), float(raw["std"]), quantiles, edges,
                   counts)


# ------------------------------------------------------------------------------ PSI


def psi(reference_counts: Sequence[int] | np.ndarray, live_counts: Sequence[int] | np.ndarray
        ) -> float:
    """Population stability index of two binned samples (half-count smoothing)."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    if ref.shape != live.shape or ref.size < 2:
        raise ValueError("PSI needs two count vectors of the same length (>= 2 bins)")
    p = (ref + 0.5) / (ref.sum() + 0.5 * ref.size)
    q = (live + 0.5) / (live.sum() + 0.5 * live.size)
    return float(np.sum((q - p) * np.log(q / p)))


def chi2_quantile(df: int, probability: float) -> float:
    """Quantile of the χ² distribution (Wilson-Hilferty; within 1 % for df >= 2)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    z = NormalDist().inv_cdf(probability)
    if df == 1:  # exact: the square of a normal
        return NormalDist().inv_cdf(0.5 + probability / 2) ** 2
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def psi_threshold(n: int, m: int, bins: int, *, base: float = 0.25, alpha: float = 0.001
                  ) -> float:
    """The larger of the usual PSI bar and PSI's 1 − α null quantile for samples n and m."""
    if n < 1 or m < 1:
        return math.inf
    return max(base, chi2_quantile(max(1, bins - 1), 1.0 - alpha) * (1.0 / n + 1.0 / m))


# ------------------------------------------------------------------------------- KS


def ks_distance(reference: FeatureSummary, values: Any) -> float:
    """sup |F_live − F_ref| of a live sample against a summarised reference."""
    live = np.sort(significant(finite(values)))
    if live.size == 0:
        return 0.0
    points = np.concatenate([live, np.asarray(reference.quantiles)])
    n = live.size
    right = np.abs(np.searchsorted(live, points, side="right") / n - reference.cdf(points))
    left = np.abs(np.searchsorted(live, points, side="left") / n
                  - reference.cdf(points, left=True))
    return float(max(right.max(), left.max()))


def ks_two_sample(a: Any, b: Any) -> float:
    """Exact two-sample KS distance of two raw samples (what `ks_distance` approximates)."""
    x, y = np.sort(finite(a)), np.sort(finite(b))
    if x.size == 0 or y.size == 0:
        return 0.0
    points = np.concatenate([x, y])
    fx = np.searchsorted(x, points, side="right") / x.size
    fy = np.searchsorted(y, points, side="right") / y.size
    return float(np.abs(fx - fy).max())


def ks_threshold(n: int, m: int, *, alpha: float = 0.001, tests: int = 1, floor: float = 0.1
                 ) -> float:
    """Critical KS distance at level α (Bonferroni over `tests`), at least `floor`."""
    if n < 1 or m < 1:
        return math.inf
    a = alpha / max(1, tests)
    critical = math.sqrt(-math.log(a / 2.0) / 2.0) * math.sqrt((n + m) / (n * m))
    return max(floor, critical)


def mean_drop_threshold(ref_std: float, m: int, live_std: float, n: int, *,
                        alpha: float = 0.001, floor: float = 0.05) -> float:
    """A drop of the mean beyond this is not noise (one-sided z test at α), at least `floor`."""
    if n < 1 or m < 1:
        return math.inf
    z = NormalDist().inv_cdf(1.0 - alpha)
    return max(floor, z * math.sqrt(ref_std ** 2 / m + live_std ** 2 / n))
