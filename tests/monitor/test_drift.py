"""THE drift test: a served tiny model stays quiet on in-distribution traffic and raises the
alarm on darkened, rotated and foreign images, on /monitor/summary and on /metrics."""

from __future__ import annotations

import pytest

from tests.monitor.conftest import (
    darkened,
    in_distribution,
    metric_value,
    other_dataset,
    post_images,
    rotated,
)

N = 60  # one window's worth of traffic per scenario (alarms need >= 30)


def _alarms(summary: dict) -> set[str]:
    return {row["feature"] for row in summary["drift"] if row["alarm"]}


def _serve(make_client, images):
    client = make_client(monitor_window=200)
    post_images(client, images)
    summary = client.get("/monitor/summary")
    assert summary.status_code == 200, summary.text
    return summary.json(), client.get("/metrics").text


def test_in_distribution_traffic_raises_no_alarm(make_client) -> None:
    summary, metrics = _serve(make_client, in_distribution(N, seed=101))
    assert summary["window"]["size"] == N and summary["status"] == "ok"
    assert summary["alarm"] is False and _alarms(summary) == set()
    # every test was actually run and scored below its threshold
    features = {row["feature"] for row in summary["drift"]}
    assert {"brightness", "contrast", "size", "confidence", "class_mix", "softmax",
            "embedding", "embedding_residual"} <= features
    assert all(row["score"] < row["threshold"] for row in summary["drift"])
    assert metric_value(metrics, "visiondeck_drift_alarm") == 0.0
    assert metric_value(metrics, "visiondeck_window_size") == N
    assert metric_value(metrics, "visiondeck_monitor_reference") == 1.0


def test_darkened_images_alarm_on_brightness(make_client) -> None:
    summary, metrics = _serve(make_client, darkened(in_distribution(N, seed=102)))
    assert summary["alarm"] is True and summary["status"] == "drift"
    assert "brightness" in _alarms(summary)
    brightness = {row["method"]: row for row in summary["drift"]
                  if row["feature"] == "brightness"}
    assert brightness["ks"]["score"] == pytest.approx(1.0)  # every image darker than any
    assert metric_value(metrics, "visiondeck_drift_alarm") == 1.0
    assert metric_value(metrics, "visiondeck_drift_feature_alarm", feature="brightness",
                        method="psi") == 1.0
    score = metric_value(metrics, "visiondeck_drift_score", feature="brightness", method="ks")
    threshold = metric_value(metrics, "visiondeck_drift_threshold", feature="brightness",
                             method="ks")
    assert score is not None and threshold is not None and score > threshold


def test_rotated_images_alarm_on_embedding_or_class_mix(make_client) -> None:
    summary, metrics = _serve(make_client, rotated(in_distribution(N, seed=103)))
    assert summary["alarm"] is True
    # rotation keeps brightness and contrast: what moves is what the network sees
    assert not {"brightness", "contrast", "size"} & _alarms(summary)
    assert {"embedding", "class_mix"} & _alarms(summary)
    assert metric_value(metrics, "visiondeck_drift_feature_alarm", feature="embedding",
                        method="ks_max") == 1.0
    assert metric_value(metrics, "visiondeck_drift_alarm") == 1.0


def test_images_of_another_data_set_alarm(make_client) -> None:
    summary, metrics = _serve(make_client, other_dataset(N, seed=104))
    assert summary["alarm"] is True
    assert {"embedding", "embedding_residual"} <= _alarms(summary)
    assert summary["confidence"]["live_mean"] < summary["confidence"]["reference_mean"]
    assert metric_value(metrics, "visiondeck_drift_alarm") == 1.0
    assert metric_value(metrics, "visiondeck_drift_feature_alarm",
                        feature="embedding_residual", method="ks") == 1.0


def test_the_window_slides_back_to_quiet(make_client) -> None:
    """Drift that has passed stops alarming once the window holds only healthy traffic."""
    client = make_client(monitor_window=40)
    post_images(client, darkened(in_distribution(40, seed=105)))
    assert client.get("/monitor/summary").json()["alarm"] is True
    post_images(client, in_distribution(40, seed=106))
    summary = client.get("/monitor/summary").json()
    assert summary["window"] == {"size": 40, "capacity": 40, "since": summary["window"]["since"]}
    assert summary["alarm"] is False


def test_too_few_predictions_never_alarm(make_client) -> None:
    client = make_client(monitor_min_window=30)
    post_images(client, darkened(in_distribution(10, seed=107)))
    summary = client.get("/monitor/summary").json()
    assert summary["status"] == "warming_up" and summary["alarm"] is False
    ks = next(r for r in summary["drift"] if (r["feature"], r["method"]) == ("brightness", "ks"))
    assert ks["score"] > ks["threshold"] and ks["n"] == 10  # clear, but 10 images prove little
