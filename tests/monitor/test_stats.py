"""The drift statistics against scipy and against what they must never do."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from visiondeck.monitor.stats import (
    FeatureSummary,
    chi2_quantile,
    ks_distance,
    ks_threshold,
    ks_two_sample,
    mean_drop_threshold,
    psi,
    psi_threshold,
    rounded,
    significant,
)


@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
def test_ks_distance_from_the_summary_matches_scipy(shift: float) -> None:
    rng = np.random.default_rng(1)
    reference, live = rng.normal(size=2000), rng.normal(shift, 1.0, size=300)
    expected = sps.ks_2samp(reference, live).statistic
    assert ks_two_sample(reference, live) == pytest.approx(expected)
    # the percentile summary stands within 0.01 of the sample's ECDF
    assert ks_distance(FeatureSummary.from_values(reference), live) == pytest.approx(
        expected, abs=0.011)


def test_ks_threshold_is_the_asymptotic_critical_value() -> None:
    # c(α) = sqrt(-ln(α/2)/2): 1.358 at 0.05
    assert ks_threshold(100, 100, alpha=0.05, floor=0) == pytest.approx(
        1.3581 * math.sqrt(2 / 100), rel=1e-3)
    assert ks_threshold(10**6, 10**6) == 0.1  # the floor: tiny shifts never page anyone
    assert ks_threshold(50, 50, tests=8) > ks_threshold(50, 50)  # Bonferroni


def test_chi2_quantile_is_close_to_scipy() -> None:
    for df in (1, 2, 5, 12, 63):
        assert chi2_quantile(df, 0.999) == pytest.approx(sps.chi2.ppf(0.999, df), rel=0.03)


def test_psi_is_zero_for_equal_mixes_and_grows_with_the_shift() -> None:
    assert psi([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0, abs=1e-3)
    small, large = psi([50, 50], [55, 45]), psi([50, 50], [90, 10])
    assert 0 < small < 0.05 < 0.25 < large
    assert math.isfinite(psi([100, 0], [0, 100]))  # empty bins are smoothed, never infinite
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_psi_threshold_follows_the_sample_sizes() -> None:
    assert psi_threshold(10_000, 10_000, 12) == 0.25  # big samples: the usual rule
    assert psi_threshold(30, 40, 12) > 1.0  # small ones: PSI's own noise is larger
    # the null really stays below it: same distribution, many draws
    rng = np.random.default_rng(2)
    summary = FeatureSummary.from_values(rng.normal(size=400))
    values = [psi(summary.counts, summary.bin_counts(rng.normal(size=60))) for _ in range(300)]
    assert np.mean(np.asarray(values) > psi_threshold(60, 400, summary.bins)) < 0.01


def test_a_constant_reference_still_sees_new_values() -> None:
    summary = FeatureSummary.from_values(np.full(50, 8.0))  # every image 16x16
    assert summary.edges == (8.0,) and summary.counts == (0, 50, 0)
    assert summary.bin_counts([8.0, 8.0, 10.0, 6.0]).tolist() == [1, 2, 1]
    assert ks_distance(summary, [8.0] * 20) == 0.0
    assert ks_distance(summary, [10.0] * 20) == 1.0
    assert psi(summary.counts, summary.bin_counts([10.0] * 40)) > 3


def test_values_beyond_the_reference_range_land_in_their_own_bins() -> None:
    summary = FeatureSummary.from_values(np.linspace(100, 200, 500))
    counts = summary.bin_counts([50, 99.9, 150, 200, 250])
    assert counts[0] == 2 and counts[-1] == 1 and counts[-2] == 1  # below, above, = max


def test_summary_round_trips_through_json_exactly() -> None:
    summary = FeatureSummary.from_values(np.random.default_rng(3).gamma(2.0, size=777))
    again = FeatureSummary.from_dict(json.loads(json.dumps(summary.to_dict())))
    assert again.quantiles == summary.quantiles and again.counts == summary.counts
    assert again.edges == summary.edges and again.n == 777
    with pytest.raises(ValueError):
        FeatureSummary.from_dict({**summary.to_dict(), "counts": [1, 2]})


def test_saturated_values_are_ties_on_both_sides() -> None:
    """A float32 confidence of 0.99999994 and a served, rounded 1.0 are the same value."""
    reference = FeatureSummary.from_values([0.99999994] * 30 + [0.9] * 10)
    assert ks_distance(reference, [1.0] * 30 + [0.9] * 10) == pytest.approx(0.0, abs=0.011)
    x = np.random.default_rng(4).random(1000) * np.logspace(-9, 5, 1000)
    once = significant(x)
    assert (significant(once) == once).all()
    assert json.loads(json.dumps(rounded(x))) == once.tolist()


def test_mean_drop_threshold_shrinks_with_more_data() -> None:
    wide = mean_drop_threshold(0.2, 100, 0.2, 20, floor=0)
    narrow = mean_drop_threshold(0.2, 10_000, 0.2, 5_000, floor=0)
    assert wide > narrow > 0
    assert mean_drop_threshold(0.0, 10, 0.0, 10) == 0.05  # the floor
