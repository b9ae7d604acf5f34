"""Every endpoint answers as documented, for each way of sending an image."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.serve.conftest import learnable_png


@pytest.fixture(params=[True, False], ids=["lane", "route"])
def serve_lane(request: pytest.FixtureRequest) -> bool:
    """Every test here runs against the /predict lane and against the FastAPI route."""
    return request.param


def _check_prediction(body: dict, top_k: int = 3) -> None:
    assert body["predicted"] in ("left", "middle", "right")
    assert len(body["top_k"]) == top_k
    probs = [item["probability"] for item in body["top_k"]]
    assert probs == sorted(probs, reverse=True)
    assert body["top_k"][0]["class"] == body["predicted"]
    assert body["confidence"] == pytest.approx(probs[0])
    assert 0 < body["confidence"] <= 1
    assert isinstance(body["unknown"], bool)
    assert body["model"]["name"] and len(body["model"]["version"]) == 12
    assert body["latency_ms"] > 0
    assert len(body["id"]) == 32 and len(body["label_token"]) == 32
    # the answer is built as a dict on the hot path: it must still be the documented schema
    from visiondeck.serve.api.schemas import PredictionResponse

    assert PredictionResponse.model_validate(body).model_dump(by_alias=True) == body


def test_health_ready_model(client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["database"] == "ok"
    model = client.get("/model").json()
    assert model["classes"] == ["left", "middle", "right"]
    assert model["input"]["image_size"] == 16 and model["architecture"] == "simple_cnn"
    assert model["version"] == body["model"]["version"]


@pytest.mark.parametrize("field", ["file", "image"])
def test_predict_multipart(client, field) -> None:
    png = learnable_png("right")
    response = client.post("/predict", files={field: ("x.png", png)})
    assert response.status_code == 200, response.text
    body = response.json()
    _check_prediction(body)
    assert body["predicted"] == "right"
    assert body["image"] == {"width": 16, "height": 16,
                             "sha256": hashlib.sha256(png).hexdigest()}


def test_predict_raw_bytes_and_base64(client) -> None:
    data = learnable_png("left")
    raw = client.post("/predict", content=data, headers={"content-type": "image/png"})
    octet = client.post("/predict?top_k=2", content=data,
                        headers={"content-type": "application/octet-stream"})
    b64 = client.post("/predict", json={"image": base64.b64encode(data).decode()})
    data_url = client.post("/predict", json={
        "image": "data:image/png;base64," + base64.b64encode(data).decode()})
    for response in (raw, b64, data_url):
        assert response.status_code == 200, response.text
        _check_prediction(response.json())
    _check_prediction(octet.json(), top_k=2)
    assert raw.json()["top_k"] == b64.json()["top_k"] == data_url.json()["top_k"]
    assert raw.json()["predicted"] == "left"


def test_batch(client) -> None:
    files = [("files", (f"{c}.png", learnable_png(c, seed=i)))
             for i, c in enumerate(["left", "middle", "right"])]
    files.append(("files", ("notes.txt", b"just some text, not a picture")))
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["file"] for r in results] == ["left.png", "middle.png", "right.png", "notes.txt"]
    assert [r["ok"] for r in results] == [True, True, True, False]
    assert [r["prediction"]["predicted"] for r in results[:3]] == ["left", "middle", "right"]
    assert results[3]["status"] == 415 and results[3]["error"]["error"] == "not_an_image"
    as_json = client.post("/predict/batch", json={
        "images": [base64.b64encode(learnable_png("middle")).decode()] * 2})
    assert [r["ok"] for r in as_json.json()["results"]] == [True, True]


def test_batch_file_limit(make_client) -> None:
    client = make_client(max_batch_files=2)
    files = [("files", (f"{i}.png", learnable_png("left", seed=i))) for i in range(3)]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 413
    assert response.json()["error"] == "too_many_files"


def test_metrics_after_predictions(client) -> None:
    for cls in ("left", "right"):
        assert client.post("/predict", files={"file": learnable_png(cls)}).status_code == 200
    client.post("/predict", content=b"not an image", headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'visiondeck_http_requests_total{method="POST",route="/predict",status="200"} 2.0' \
        in text
    assert 'visiondeck_errors_total{kind="not_an_image"} 1.0' in text
    assert "visiondeck_inference_batch_size_count" in text
    assert 'visiondeck_predictions_total{cls="right"' in text
    assert "visiondeck_prediction_confidence_bucket" in text
    assert "visiondeck_http_request_seconds_bucket" in text
    assert "visiondeck_model_info" in text


def test_openapi_documents_every_endpoint(client) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch", "/explain", "/health", "/ready", "/model",
                 "/metrics", "/predictions", "/admin/reload"):
        assert path in schema["paths"], path
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(body)
    assert client.get("/docs").status_code == 200


def test_unknown_flag_from_calibration(make_client, bundle_copy) -> None:
    """A reject threshold above every probability marks everything unknown."""
    import json

    info = json.loads((bundle_copy / "bundle.json").read_text())
    info["calibration"]["reject"] = {"method": "max_prob", "threshold": 1.01}
    (bundle_copy / "bundle.json").write_text(json.dumps(info))
    client = make_client(bundle=str(bundle_copy))
    body = client.post("/predict", files={"file": learnable_png("left")}).json()
    assert body["unknown"] is True
    assert 'visiondeck_unknown_predictions_total' in client.get("/metrics").text


def test_not_ready_without_model(make_client, tmp_path) -> None:
    client = make_client(bundle=str(tmp_path / "missing"))
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503 and "not a Bundle" in ready.json()["error"]
    response = client.post("/predict", files={"file": learnable_png("left")})
    assert response.status_code == 503 and response.json()["error"] == "model_unavailable"
