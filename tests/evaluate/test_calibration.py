"""Temperature scaling, ECE, unknown-input rejection and decision thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from visiondeck.evaluate import calibration as cal


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), logits reported as 4·z: right ranking, far too sure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 4))
    probs = cal.softmax(z)
    labels = np.array([rng.choice(4, p=p) for p in probs])
    return 4.0 * z, labels


def test_temperature_scaling_lowers_nll_and_ece() -> None:
    logits, labels = _overconfident()
    temperature = cal.fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)  # undoes the ×4
    test_logits, test_labels = _overconfident(seed=1)
    before = cal.negative_log_likelihood(test_logits, test_labels)
    after = cal.negative_log_likelihood(test_logits, test_labels, temperature)
    assert after < 0.8 * before
    ece_before = cal.expected_calibration_error(cal.softmax(test_logits), test_labels)
    ece_after = cal.expected_calibration_error(cal.softmax(test_logits, temperature), test_labels)
    assert ece_after < 0.05 < ece_before


def test_all_right_keeps_temperature_one() -> None:
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert cal.fit_temperature(logits, np.array([0, 1])) == 1.0


def test_reliability_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    rel = cal.reliability(probs, labels, n_bins=5)  # bins of 0.2, right-closed
    # (0.4, 0.6]: 0.6 right; (0.6, 0.8]: 0.7 right, 0.8 wrong; (0.8, 1]: 0.9 right
    assert rel.counts.tolist() == [0, 0, 1, 2, 1]
    expected = (1 * abs(1 - 0.6) + 2 * abs(0.5 - 0.75) + 1 * abs(1 - 0.9)) / 4
    assert rel.ece == pytest.approx(expected)


@pytest.mark.parametrize("method", ["max_prob", "energy"])
def test_reject_threshold_fires_on_noise_not_on_known(method: str) -> None:
    rng = np.random.default_rng(0)
    known = np.eye(5)[rng.integers(0, 5, 1000)] * 8.0 + rng.normal(0, 1, (1000, 5))
    noise = rng.normal(0, 1, (500, 5))  # no class stands out
    threshold = cal.fit_reject_threshold(known, method=method, keep=0.95)
    assert cal.reject_mask(known, method, threshold).mean() == pytest.approx(0.05, abs=0.01)
    assert cal.reject_mask(noise, method, threshold).mean() > 0.9


def test_reject_rule_matches_the_bundle_contract() -> None:
    from visiondeck.export.bundle import RejectRule

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (200, 3))
    for method in ("max_prob", "energy"):
        threshold = cal.fit_reject_threshold(logits, 1.5, method=method, keep=0.9)
        ours = cal.reject_mask(logits, method, threshold, 1.5)
        theirs = RejectRule(method, threshold).unknown(logits, cal.softmax(logits, 1.5), 1.5)
        assert np.array_equal(ours, theirs)


def test_decision_threshold_reaches_target_sensitivity() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(0.35 * labels + rng.normal(0.4, 0.2, 400), 0, 1)
    choice = cal.fit_decision_threshold(scores, labels, 1, target_sensitivity=0.95)
    assert choice.val_sensitivity >= 0.95
    looser = cal.fit_decision_threshold(scores, labels, 1, target_sensitivity=0.5)
    assert looser.threshold > choice.threshold and looser.val_specificity > choice.val_specificity
    youden = cal.fit_decision_threshold(scores, labels, 1)
    assert youden.val_sensitivity + youden.val_specificity > 1.4
