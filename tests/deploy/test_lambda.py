"""deploy/lambda/handler.py called with recorded API Gateway events (REST v1, HTTP API v2).

The events in tests/deploy/events/ have the exact shape API Gateway hands a proxy
integration; the model is a real ONNX Bundle run by ONNX Runtime; the S3 case downloads it
from a real S3-compatible server (seaweedfs) through boto3.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.deploy.conftest import CLASSES, colour_png

ROOT = Path(__file__).resolve().parents[2]
EVENTS = Path(__file__).parent / "events"
HANDLER = ROOT / "deploy" / "lambda" / "handler.py"
SETTINGS = ("VISIONDECK_BUNDLE", "VISIONDECK_BUNDLE_S3", "VISIONDECK_VARIANT", "VISIONDECK_TOP_K",
            "VISIONDECK_MAX_UPLOAD_BYTES", "VISIONDECK_MAX_PIXELS", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "AWS_LAMBDA_FUNCTION_NAME")


def _load_handler():
    spec = importlib.util.spec_from_file_location("visiondeck_lambda_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as Lambda's runtime imports it: a module by name
    spec.loader.exec_module(module)
    return module


lam = _load_handler()


def event(name: str, **changes) -> dict:
    data = json.loads((EVENTS / name).read_text())
    data.update(changes)
    return data


def call(ev: dict) -> tuple[int, dict]:
    answer = lam.handler(ev, None)
    assert answer["headers"]["Content-Type"] == "application/json"
    assert answer["isBase64Encoded"] is False
    return answer["statusCode"], json.loads(answer["body"])


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    lam._MODELS.clear()


@pytest.fixture
def baked(monkeypatch: pytest.MonkeyPatch, colour_bundle: Path) -> Path:
    """A Bundle baked into the image: VISIONDECK_BUNDLE=/opt/bundle."""
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(colour_bundle))
    return colour_bundle


@pytest.mark.parametrize(("name", "label", "top_k"), [
    ("v1-rest-post-png.json", "red", 3),        # REST API, binary media type: base64 body
    ("v1-rest-post-json.json", "blue", 2),      # REST API, JSON {"image": ...}, ?top_k=2
    ("v2-http-post-png.json", "green", 2),      # HTTP API, binary body, ?top_k=2
    ("v2-http-post-json.json", "red", 3),       # HTTP API, JSON body (not base64-encoded)
])
def test_recorded_events_are_predicted(baked: Path, name: str, label: str, top_k: int) -> None:
    ev = event(name)
    status, body = call(ev)
    assert status == 200, body
    assert body["predicted"] == label and not body["unknown"]
    assert body["top_k"][0]["class"] == label
    assert len(body["top_k"]) == top_k
    assert body["confidence"] == body["top_k"][0]["probability"] > 0.9
    assert body["model"]["name"] == "colours" and body["model"]["variant"] == "fp32"
    assert body["image"]["width"] == body["image"]["height"] == 16
    raw = base64.b64decode(ev["body"]) if ev["isBase64Encoded"] else base64.b64decode(
        json.loads(ev["body"])["image"])
    assert body["image"]["sha256"] == hashlib.sha256(raw).hexdigest()


def test_the_version_is_the_one_the_rest_api_reports(baked: Path) -> None:
    # the API's engine: sha256(bundle.json + the variant's ONNX file), 12 hex digits
    digest = hashlib.sha256((baked / "bundle.json").read_bytes() + (baked / "model.onnx")
                            .read_bytes()).hexdigest()[:12]
    status, body = call(event("v2-http-get-model.json"))
    assert status == 200
    assert body["version"] == digest and body["classes"] == CLASSES
    assert body["input"]["image_size"] == 8


def test_health_needs_no_model() -> None:
    status, body = call(event("v1-rest-get-health.json"))  # no VISIONDECK_BUNDLE at all
    assert (status, body) == (200, {"status": "ok"})


def test_missing_body_is_400(baked: Path) -> None:
    status, body = call(event("v1-rest-post-no-body.json"))
    assert status == 400 and body["error"] == "no_image" and body["hint"]
    status, body = call(event("v2-http-post-json.json", body=json.dumps({"picture": "x"})))
    assert status == 400 and body["error"] == "no_image"


def test_corrupt_and_non_images_get_the_rest_apis_statuses(baked: Path) -> None:
    status, body = call(event("v2-http-post-truncated-png.json"))
    assert status == 422 and body["error"] == "truncated", body  # the decoder's problem
    status, body = call(event("v2-http-post-text.json"))
    assert status == 415 and body["error"] == "not_an_image"
    status, body = call(event("v2-http-post-png.json", body="bm90IGJhc2U2NA=!"))
    assert status == 400 and body["error"] == "bad_base64"
    status, body = call(event("v1-rest-post-json.json", body='{"image": '))
    assert status == 400 and body["error"] == "bad_json"
    headers = {"content-type": "text/plain"}
    status, body = call(event("v2-http-post-json.json", headers=headers, body="hello"))
    assert status == 415 and body["error"] == "unsupported_media_type"


def test_too_large_is_413_before_anything_is_decoded(baked: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ev = event("v1-rest-post-png.json")
    size = len(base64.b64decode(ev["body"]))
    monkeypatch.setenv("VISIONDECK_MAX_UPLOAD_BYTES", str(size - 1))
    status, body = call(ev)
    assert status == 413 and body["error"] == "too_large" and f"{size - 1:,}" in body["detail"]
    # a body far past the limit is refused from its length: this one is not even base64
    status, body = call(event("v1-rest-post-png.json", body="!" * (4 * size)))
    assert status == 413
    monkeypatch.setenv("VISIONDECK_MAX_UPLOAD_BYTES", str(size))
    assert call(ev)[0] == 200


def test_pixel_bombs_are_refused(baked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONDECK_MAX_PIXELS", "100")  # the 16x16 picture has 256
    status, body = call(event("v2-http-post-png.json"))
    assert status == 422 and body["error"] == "bomb"


def test_bad_top_k_and_methods(baked: Path) -> None:
    # the REST API's rule and status (serve/api/rules.py): 422 outside 1..100
    for text in ("0", "101", "-1", "2.5", "three", "²", "9" * 5_000):
        ev = event("v2-http-post-png.json", queryStringParameters={"top_k": text})
        status, body = call(ev)
        assert status == 422 and body["error"] == "invalid_request", (text[:20], body)
        assert len(body["detail"]) < 200  # a 5,000-digit value is not echoed back
    status, body = call(event("v2-http-post-png.json", queryStringParameters={"top_k": "100"}))
    assert status == 200 and len(body["top_k"]) == len(CLASSES)
    ev = event("v2-http-post-png.json")
    ev["requestContext"]["http"]["method"] = "DELETE"
    assert call(ev)[0] == 405


def test_a_missing_model_is_503_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            colour_bundle: Path) -> None:
    status, body = call(event("v2-http-post-png.json"))  # neither setting given
    assert status == 503 and body["error"] == "model_unavailable"
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(tmp_path / "nowhere"))
    status, body = call(event("v2-http-post-png.json"))
    assert status == 503 and "not a Bundle" in body["detail"]
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(colour_bundle))  # fixed: the next call works
    assert call(event("v2-http-post-png.json"))[0] == 200


def test_bundle_from_a_real_s3_store(s3_store, colour_bundle: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client = s3_store.client()
    for item in colour_bundle.iterdir():
        client.upload_file(str(item), s3_store.bucket, f"models/colours/v1/{item.name}")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the function's /tmp
    monkeypatch.setenv("VISIONDECK_BUNDLE_S3", f"s3://{s3_store.bucket}/models/colours/v1/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_store.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_store.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_store.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name, label in (("v2-http-post-png.json", "green"), ("v1-rest-post-png.json", "red")):
        status, body = call(event(name))
        assert status == 200 and body["predicted"] == label, body
    [folder] = (tmp_path / "visiondeck-bundles").iterdir()  # one download per cold start
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "model.onnx"]  # no weights
    assert (folder / "model.onnx").read_bytes() == (colour_bundle / "model.onnx").read_bytes()
    # a prefix that holds no Bundle: 503 with the key that is missing, nothing left in /tmp
    lam._MODELS.clear()
    monkeypatch.setenv("VISIONDECK_BUNDLE_S3", f"s3://{s3_store.bucket}/models/none")
    status, body = call(event("v2-http-post-png.json"))
    assert status == 503 and "models/none/bundle.json" in body["detail"]
    assert len(list((tmp_path / "visiondeck-bundles").iterdir())) == 1


def test_the_handler_never_imports_torch(colour_bundle: Path) -> None:
    script = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("handler", {str(HANDLER)!r})
module = importlib.util.module_from_spec(spec); sys.modules["handler"] = module
spec.loader.exec_module(module)
event = json.load(open({str(EVENTS / "v2-http-post-png.json")!r}))
answer = module.handler(event, None)
print(json.dumps([answer["statusCode"], "torch" in sys.modules]))
"""
    env = {**os.environ, "VISIONDECK_BUNDLE": str(colour_bundle)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [200, False]


def test_predictions_match_the_predictor(baked: Path) -> None:
    from visiondeck.export.predictor import Predictor

    picture = colour_png("blue", size=24, seed=9)
    ev = event("v2-http-post-png.json", body=base64.b64encode(picture).decode())
    status, body = call(ev)
    [expected] = Predictor(baked, top_k=3).predict(picture)
    assert status == 200
    assert body["predicted"] == expected.label
    assert [(i["class"], i["probability"]) for i in body["top_k"]][:2] == \
        [(label, p) for label, p in expected.topk][:2]


# ------------------------------------------- issue 18: hostile requests are 4xx, never 5xx


def test_json_nested_100000_deep_is_400_not_a_traceback(baked: Path, caplog) -> None:
    deep = '{"image": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for ev in (event("v2-http-post-json.json", body=deep),
               event("v1-rest-post-json.json", body=deep),
               event("v2-http-post-json.json", body="[" * 100_000)):
        status, body = call(ev)
        assert status == 400 and body["error"] == "bad_json", body
    assert "Traceback" not in caplog.text and "failed" not in caplog.text


def test_a_body_no_encoding_can_hold_is_400(baked: Path) -> None:
    headers = {"content-type": "image/png"}
    status, body = call(event("v2-http-post-json.json", headers=headers, body="\ud800abc"))
    assert status == 400 and body["error"] == "bad_body"


def _encoded(image, fmt: str) -> str:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_pixels_are_capped_by_the_models_input_size(baked: Path) -> None:
    """The colour model reads 8×8 pictures: 32× its side is 256×256 = 65,536 pixels, far
    below VISIONDECK_MAX_PIXELS (40 M) and the Bundle's own 4 M."""
    from PIL import Image

    png = _encoded(Image.new("RGB", (300, 300), (230, 20, 20)), "PNG")  # 90,000 pixels
    status, body = call(event("v2-http-post-png.json", body=png))
    assert status == 422 and body["error"] == "bomb"
    assert "above the limit of 65,536" in body["detail"] and "8 px input" in body["detail"]
    assert "256×256" in body["hint"]
    # a JPEG over the cap is decoded at a quarter of its size instead (1/2 is still 90,000)
    jpeg = _encoded(Image.new("RGB", (600, 600), (20, 20, 230)), "JPEG")
    status, body = call(event("v2-http-post-png.json", body=jpeg))
    assert status == 200 and body["predicted"] == "blue", body
    assert (body["image"]["width"], body["image"]["height"]) == (150, 150)
