"""Monitoring inside the service: the summary contract, old Bundles, switches, labels → live
accuracy, rows annotated for reports, kept uploads, and the reference measured at export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.factories import png_bytes
from tests.monitor.conftest import in_distribution, metric_value, post_images
from visiondeck.export.bundle import load_bundle
from visiondeck.monitor import load_reference

_SUMMARY_KEYS = {"model", "window", "volume", "class_mix", "confidence", "drift", "alarm",
                 "live_accuracy"}


def test_summary_has_the_shape_the_web_page_reads(make_client) -> None:
    client = make_client()
    predictions = post_images(client, in_distribution(35, seed=201))
    body = client.get("/monitor/summary").json()
    assert set(body) >= _SUMMARY_KEYS
    model = client.get("/model").json()
    assert body["model"] == {"name": model["name"], "version": model["version"]}
    assert body["window"]["size"] == 35 and body["window"]["capacity"] == 1000
    assert body["window"]["since"].endswith("Z")
    assert sum(v["count"] for v in body["volume"]) == 35
    assert all(set(v) == {"t", "count"} and v["t"].endswith("Z") for v in body["volume"])
    assert set(body["class_mix"]["reference"]) == set(body["class_mix"]["live"]) == {
        "left", "middle", "right"}
    live_mix = {c: sum(p["predicted"] == c for p in predictions) / 35
                for c in ("left", "middle", "right")}
    assert body["class_mix"]["live"] == pytest.approx(live_mix, abs=1e-6)
    confidence = body["confidence"]
    assert 0 < confidence["reference_mean"] <= 1 and 0 < confidence["live_mean"] <= 1
    assert all(set(p) == {"t", "mean"} for p in confidence["series"])
    for row in body["drift"]:
        assert {"feature", "method", "score", "threshold", "alarm"} <= set(row)
        assert isinstance(row["score"], float) and isinstance(row["threshold"], float)
        assert isinstance(row["alarm"], bool)
    assert isinstance(body["alarm"], bool)
    assert body["live_accuracy"]["labelled"] == 0 and body["live_accuracy"]["accuracy"] is None


def test_bundle_without_reference_still_serves_and_says_so(bundle_copy: Path,
                                                           make_client) -> None:
    info = json.loads((bundle_copy / "bundle.json").read_text())
    info.pop("reference")  # as exported before monitoring existed
    (bundle_copy / "bundle.json").write_text(json.dumps(info))
    (bundle_copy / "reference.json").unlink()
    assert load_reference(load_bundle(bundle_copy)) is None
    client = make_client(bundle=str(bundle_copy))
    assert client.post("/predict", content=png_bytes(in_distribution(1, 1)[0]),
                       headers={"content-type": "image/png"}).status_code == 200
    response = client.get("/monitor/summary")
    assert response.status_code == 404
    assert response.json()["error"] == "no_reference" and "export" in response.json()["hint"]
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "visiondeck_monitor_reference") == 0.0
    assert metric_value(metrics, "visiondeck_drift_alarm") is None


def test_monitoring_can_be_switched_off(make_client) -> None:
    client = make_client(monitor=False)
    post_images(client, in_distribution(3, seed=202))
    response = client.get("/monitor/summary")
    assert response.status_code == 404 and response.json()["error"] == "monitor_off"
    assert "visiondeck_drift" not in client.get("/metrics").text


def test_labels_feed_live_accuracy(make_client) -> None:
    client = make_client()
    predictions = post_images(client, in_distribution(9, seed=203))
    # six labelled right, three labelled with another class than predicted
    for i, p in enumerate(predictions):
        wrong = next(c for c in ("left", "middle", "right") if c != p["predicted"])
        label = p["predicted"] if i < 6 else wrong
        response = client.put(f"/predictions/{p['id']}/label",
                              json={"label": label, "token": p["label_token"]})
        assert response.status_code == 200, response.text
    client.app.state.services.writer.flush()
    body = client.get("/monitor/summary").json()["live_accuracy"]
    assert body["labelled"] == 9 and body["correct"] == 6
    assert body["accuracy"] == pytest.approx(6 / 9, abs=1e-6)
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "visiondeck_live_accuracy") == pytest.approx(6 / 9, abs=1e-6)
    assert metric_value(metrics, "visiondeck_live_labelled") == 9


def test_live_accuracy_below_the_minimum_raises_the_alarm(make_client) -> None:
    client = make_client(monitor_min_accuracy=0.9, monitor_min_window=5)
    predictions = post_images(client, in_distribution(30, seed=204))
    for p in predictions:  # every label disagrees with the model
        wrong = next(c for c in ("left", "middle", "right") if c != p["predicted"])
        client.put(f"/predictions/{p['id']}/label", json={"label": wrong,
                                                          "token": p["label_token"]})
    client.app.state.services.writer.flush()
    body = client.get("/monitor/summary").json()
    assert body["live_accuracy"]["accuracy"] == 0.0
    assert body["accuracy_alarm"] is True and body["alarm"] is True
    assert not [row for row in body["drift"] if row["alarm"]]  # the inputs look fine


def test_rows_carry_image_statistics_and_the_embedding_projection(make_client) -> None:
    client = make_client()
    image = in_distribution(1, seed=205)[0]
    p = post_images(client, [image])[0]
    client.app.state.services.writer.flush()
    record = client.app.state.services.store.get(p["id"])
    assert record.brightness == pytest.approx(float(image.mean()))
    assert record.contrast == pytest.approx(float(image.std()))
    reference = load_reference(load_bundle(client.app.state.services.engine.model.bundle))
    assert record.features["ref"] == reference.id
    # a second computation of the projection: the Bundle's ONNX model run here on the
    # picture, then the PCA written out (centre, project on the components, residual norm)
    model = client.app.state.services.engine.model
    tensor = model.bundle.prepare(image[:, :, None] if image.ndim == 2 else image)
    embedding = model.session.run(["embedding"], {model.input_name: tensor[None]})[0][0]
    basis = reference.embedding
    centred = embedding.astype(np.float64) - basis.mean
    z = basis.components @ centred
    residual = np.linalg.norm(centred - z @ basis.components)
    assert record.features["z"] == pytest.approx(z.tolist(), rel=1e-3, abs=1e-4)
    assert record.features["r"] == pytest.approx(residual, rel=1e-3, abs=1e-4)
    assert np.abs(z).max() > 1e-3  # not a projection of zeros


def test_uploads_are_kept_content_addressed_off_the_request_path(make_client,
                                                                 tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    client = make_client(keep_uploads=str(kept))
    data = png_bytes(in_distribution(1, seed=206)[0])
    for _ in range(2):  # the same picture twice is stored once
        response = client.post("/predict", content=data, headers={"content-type": "image/png"})
        assert response.status_code == 200
    keeper = next(o for o in client.app.state.services.observers
                  if type(o).__name__ == "UploadKeeper")
    keeper.flush()
    sha = hashlib.sha256(data).hexdigest()
    path = kept / sha[:2] / f"{sha}.png"
    assert path.read_bytes() == data
    assert [p for p in kept.rglob("*") if p.is_file()] == [path]
    assert keeper.written == 1


def test_keeper_ignores_what_is_over_the_upload_limit(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from visiondeck.serve.monitoring.observers import ImageStats, PredictionEvent
    from visiondeck.serve.monitoring.upload_archive import UploadKeeper

    keeper = UploadKeeper(tmp_path, max_bytes=100)
    stats = ImageStats(16, 16, 10.0, 5.0, 3)

    def event(data: bytes) -> PredictionEvent:
        return PredictionEvent(
            id="x" * 32, created_at=datetime.now(UTC), model_name="m", model_version="v",
            classes=("a", "b"), probabilities=np.array([0.5, 0.5]), predicted="a",
            confidence=0.5, unknown=False, latency_ms=1.0, image=stats,
            image_sha256=hashlib.sha256(data).hexdigest(), extra={"upload": data})

    keeper.observe(event(b"\x89PNG\r\n\x1a\n" + b"x" * 200))
    keeper.observe(event(b"\x89PNG\r\n\x1a\n" + b"y" * 50))
    keeper.flush()
    keeper.close()
    assert [p.suffix for p in tmp_path.rglob("*") if p.is_file()] == [".png"]
    assert keeper.written == 1


def test_a_new_model_version_starts_a_new_window(make_client, bundle_copy: Path) -> None:
    import asyncio

    client = make_client(bundle=str(bundle_copy))
    post_images(client, in_distribution(12, seed=207))
    before = client.get("/monitor/summary").json()
    assert before["window"]["size"] == 12
    info = json.loads((bundle_copy / "bundle.json").read_text())
    info["name"] = "renamed"  # a re-export: new bundle.json, new version
    (bundle_copy / "bundle.json").write_text(json.dumps(info))
    engine = client.app.state.services.engine
    _, swapped = asyncio.run(engine.reload())
    assert swapped
    after = client.get("/monitor/summary").json()
    assert after["model"]["version"] != before["model"]["version"]
    assert after["window"]["size"] == 0
    post_images(client, in_distribution(3, seed=208))
    assert client.get("/monitor/summary").json()["window"]["size"] == 3
