"""`assess` and `decide_retrain` on synthetic windows (no model: fast, exact)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.factories import loaded_after_import
from visiondeck.monitor import (
    DriftThresholds,
    SlidingWindow,
    WindowData,
    assess,
    build_reference,
    live_accuracy,
)
from visiondeck.monitor.retrain import decide_retrain

CLASSES = ["cat", "dog", "fox"]


def _reference(n: int = 400):
    rng = np.random.default_rng(0)
    probabilities = np.stack([np.roll(rng.dirichlet([8, 1, 1]), i % 3) for i in range(n)])
    return build_reference(
        classes=CLASSES, widths=np.full(n, 64), heights=np.full(n, 48),
        brightness=rng.normal(120, 15, n), contrast=rng.normal(40, 5, n),
        probabilities=probabilities, predicted=probabilities.argmax(1),
        labels=probabilities.argmax(1), embeddings=rng.normal(size=(n, 16)),
        basis_embeddings=rng.normal(size=(200, 16)))


def _window(reference, n: int, *, seed: int, brightness: float = 120.0,
            embedding_shift: float = 0.0, labels=None) -> SlidingWindow:
    rng = np.random.default_rng(seed)
    window = SlidingWindow(reference, capacity=1000)
    for i in range(n):
        p = np.roll(rng.dirichlet([8, 1, 1]), i % 3)
        window.add(time=1e9 + i, width=64, height=48, brightness=rng.normal(brightness, 15),
                   contrast=rng.normal(40, 5), confidence=float(p.max()),
                   predicted=int(p.argmax()), probabilities=p,
                   embedding=rng.normal(size=16) + embedding_shift,
                   label=None if labels is None else labels[i])
    return window


def test_same_distribution_is_quiet_and_shifts_are_named() -> None:
    reference = _reference()
    quiet = assess(reference, _window(reference, 300, seed=1).snapshot())
    assert quiet.status == "ok" and not quiet.alarm and quiet.window_size == 300
    dark = assess(reference, _window(reference, 300, seed=2, brightness=80).snapshot())
    assert {f.feature for f in dark.alarms} == {"brightness"}
    moved = assess(reference, _window(reference, 300, seed=3, embedding_shift=1.5).snapshot())
    assert "embedding" in {f.feature for f in moved.alarms}
    assert "brightness" not in {f.feature for f in moved.alarms}


def test_class_mix_shift_alarms() -> None:
    reference = _reference()
    rng = np.random.default_rng(4)
    window = SlidingWindow(reference, capacity=500)
    for i in range(300):  # nearly everything predicted "cat"
        p = rng.dirichlet([8, 1, 1])
        window.add(time=float(i), width=64, height=48, brightness=120.0, contrast=40.0,
                   confidence=float(p.max()), predicted=0 if i % 10 else 1, probabilities=p)
    result = assess(reference, window.snapshot())
    assert "class_mix" in {f.feature for f in result.alarms}
    assert result.class_mix_live["cat"] == pytest.approx(0.9)


def test_window_keeps_the_newest_predictions_in_order() -> None:
    reference = _reference()
    window = _window(reference, 30, seed=5)
    small = SlidingWindow(reference, capacity=10)
    for t in range(25):
        small.add(time=float(t), width=64, height=48, brightness=float(t), contrast=1.0,
                  confidence=0.9, predicted=0)
    data = small.snapshot()
    assert len(small) == 10 and data.times.tolist() == [float(t) for t in range(15, 25)]
    assert data.features["brightness"].tolist() == [float(t) for t in range(15, 25)]
    assert small.since == 15.0 and len(window) == 30


def test_adding_in_bulk_is_adding_one_by_one() -> None:
    """The service folds queued predictions with add_many: the window must not differ."""
    reference = _reference()
    rng = np.random.default_rng(6)
    n = 37
    rows = {"times": rng.random(n) * 1e9, "widths": rng.integers(8, 500, n),
            "heights": rng.integers(8, 500, n), "brightness": rng.normal(120, 15, n),
            "contrast": rng.normal(40, 5, n), "confidence": rng.random(n),
            "predicted": rng.integers(0, 3, n),
            "probabilities": [rng.dirichlet([1, 1, 1]) if i % 5 else None for i in range(n)],
            "embeddings": [rng.normal(size=16) if i % 4 else None for i in range(n)],
            "labels": [CLASSES[i % 3] if i % 3 else ("wolf" if i % 2 else None)
                       for i in range(n)]}
    one, bulk = SlidingWindow(reference, capacity=25), SlidingWindow(reference, capacity=25)
    singles = [one.add(time=rows["times"][i], width=rows["widths"][i],
                       height=rows["heights"][i], brightness=rows["brightness"][i],
                       contrast=rows["contrast"][i], confidence=rows["confidence"][i],
                       predicted=int(rows["predicted"][i]),
                       probabilities=rows["probabilities"][i],
                       embedding=rows["embeddings"][i], label=rows["labels"][i])
               for i in range(n)]
    z, r = bulk.add_many(**rows)  # more rows than the window holds: the newest 25 stay
    a, b = one.snapshot(), bulk.snapshot()
    assert len(one) == len(bulk) == 25 and one.since == bulk.since
    for name in ("times", "predicted", "labels", "probabilities", "projections", "residuals"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), equal_nan=True)
    for name in a.features:
        np.testing.assert_allclose(a.features[name], b.features[name], equal_nan=True)
    for i, single in enumerate(singles):  # the projections returned are the same too
        if single is None:
            assert rows["embeddings"][i] is None and np.isnan(r[i])
        else:
            np.testing.assert_allclose(single[0], z[i])
            assert single[1] == pytest.approx(r[i])


def test_stored_rows_make_the_same_window() -> None:
    reference = _reference()
    data = WindowData.from_rows(
        reference, times=[1.0, 2.0, 3.0], widths=[64, 64, 32], heights=[48, 48, 32],
        brightness=[100.0, None, 90.0], contrast=[30.0, None, 20.0],
        confidence=[0.9, 0.8, 0.7], predicted=["cat", "dog", "wolf"],
        labels=["cat", None, "bear"], projections=[None, [0.0] * 8, None],
        residuals=[None, 0.5, None])
    assert data.predicted.tolist() == [0, 1, -1] and data.labels.tolist() == [0, -1, -2]
    assert np.isnan(data.features["brightness"][1])
    assert data.features["size"].tolist() == pytest.approx([np.log2(64 * 48)] * 2 + [10.0])
    accuracy = assess(reference, data).live_accuracy
    assert (accuracy.labelled, accuracy.correct, accuracy.unknown_labels) == (1, 1, 1)


def test_live_accuracy_and_the_retrain_decision() -> None:
    accuracy = live_accuracy([("cat", "cat"), ("dog", "cat"), ("fox", "fox"), ("cat", "owl")],
                             CLASSES, reference=0.95)
    assert (accuracy.labelled, accuracy.correct, accuracy.unknown_labels) == (3, 2, 1)
    assert accuracy.accuracy == pytest.approx(2 / 3, abs=1e-6)
    assert not decide_retrain(accuracy, min_accuracy=0.9).retrain  # 3 labels prove nothing
    decision = decide_retrain(accuracy, min_accuracy=0.9, min_labelled=3)
    assert decision.retrain and "below 0.900" in decision.reasons[0]
    assert not decide_retrain(accuracy, min_accuracy=0.5, min_labelled=3).retrain

    reference = _reference()
    drifted = assess(reference, _window(reference, 300, seed=6, brightness=60).snapshot())
    assert not decide_retrain(drifted.live_accuracy, drifted.alarms).retrain  # not asked
    decision = decide_retrain(drifted.live_accuracy, drifted.alarms, on_drift=True)
    assert decision.retrain and "brightness/psi" in decision.drift_alarms


def test_accuracy_alarm_only_when_asked_and_with_enough_labels() -> None:
    reference = _reference()
    wrong = ["fox"] * 40  # the synthetic model rarely predicts fox for every image
    window = _window(reference, 40, seed=7, labels=wrong).snapshot()
    assert not assess(reference, window).accuracy_alarm
    strict = DriftThresholds(min_accuracy=0.8, min_labelled=20)
    result = assess(reference, window, strict)
    assert result.accuracy_alarm and result.alarm and result.status == "drift"
    few = DriftThresholds(min_accuracy=0.8, min_labelled=100)
    assert not assess(reference, window, few).accuracy_alarm


def test_monitor_package_is_numpy_only_at_import() -> None:
    """`export` and `serve` import it: it must never pull torch, ORT or a web stack in."""
    assert loaded_after_import(
        ["visiondeck.monitor", "visiondeck.monitor.retrain", "visiondeck.monitor.report"],
        ["torch", "onnxruntime", "jinja2", "scipy", "sqlalchemy", "fastapi", "lightning"]) == []
