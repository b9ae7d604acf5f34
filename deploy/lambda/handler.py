"""AWS Lambda behind API Gateway: an image in, a VisionDeck prediction out (no torch).

Why a handler of its own rather than the FastAPI app behind an adapter: a Lambda answers one
request at a time, so micro-batching, the history writer and rate limits (API Gateway has
its own throttling) would be dead weight on every cold start. What it shares with the REST
API is everything that decides the answer: the Bundle (`load_bundle`), the safe decoder
(`visiondeck.imaging`), the training preparation (`Bundle.prepare`), ONNX Runtime and the
Bundle's calibration (`Predictor`), the decoder-error → status mapping of the API, the
decode limits of a served model (`imaging.model_decode_limits`: a pixel cap derived from
the model's input size) and the request rules (`serve/api/rules.py`: JSON body parsing,
`top_k` bounds - a module that imports no web framework, for this image's sake).

Events: API Gateway REST APIs (payload v1) and HTTP APIs (payload v2). The image is the
body - raw bytes (base64-encoded by API Gateway: `isBase64Encoded`) or JSON
`{"image": "<base64>"}`. `POST` predicts (`?top_k=N`), `GET .../health` answers without
touching the model, any other `GET` describes the model. Every refusal is a JSON
`{"error", "detail", "hint"}` with a 4xx status: 400 for a request without an image or
with broken JSON/base64 (JSON nested too deeply included), 413 past the size limit
(checked before anything is decoded), 415 for bytes that are no supported image, 422 for
a damaged one, one with more pixels than the model's cap, or a `top_k` that is not a
whole number from 1 to 100 - the REST API's codes. Nothing a client sends produces a 5xx.

Where the model comes from (read once per container, i.e. per cold start):
  VISIONDECK_BUNDLE      a Bundle folder baked into the image (/opt/bundle), or a
                         models:/NAME@ALIAS URI (needs visiondeck[track] and
                         MLFLOW_TRACKING_URI; the cache goes to /tmp on Lambda)
  VISIONDECK_BUNDLE_S3   s3://bucket/prefix of a Bundle: bundle.json and the ONNX file
                         of the variant are downloaded to /tmp (never the weights).
                         AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL point at an
                         S3-compatible store (MinIO, seaweedfs).
Other settings: VISIONDECK_VARIANT (auto | fp32 | int8; auto: the Bundle's default_variant),
VISIONDECK_TOP_K (3; 1-100, checked at load),
VISIONDECK_MAX_UPLOAD_BYTES (4 MiB: a synchronous Lambda payload is at most 6 MB, and
base64 adds a third), VISIONDECK_MAX_PIXELS (40 million: the absolute ceiling above the
model-derived cap) - the names `visiondeck serve` uses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiondeck.export.bundle import Bundle, load_bundle
from visiondeck.export.errors import BundleError
from visiondeck.export.predictor import Predictor
from visiondeck.imaging import ImageDecodeError, decode_image, model_decode_limits
from visiondeck.serve.api.rules import TOP_K_MAX, TOP_K_MIN, parse_json_body, parse_top_k
from visiondeck.serve.errors import ServeError, decode_error_status
from visiondeck.serve.labelsets import check_servable, label_answer

__all__ = ["Refusal", "handler", "load_model"]

log = logging.getLogger("visiondeck.lambda")
log.setLevel(logging.INFO)

DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_TOP_K = 3


class Refusal(Exception):
    """A request this handler answers with a 4xx (or 503) JSON error."""

    def __init__(self, status: int, code: str, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.hint = status, code, detail, hint


@dataclass
class Model:
    """A loaded Bundle with its ORT session, kept for the container's lifetime."""

    predictor: Predictor
    version: str
    source: str
    top_k: int = DEFAULT_TOP_K  # VISIONDECK_TOP_K, checked once at load

    @property
    def bundle(self) -> Bundle:
        return self.predictor.bundle


_MODELS: dict[tuple[str, str, str, str], Model] = {}
_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- handler


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda entry point (`handler.handler`): an API Gateway event → an HTTP answer."""
    started = time.perf_counter()
    request_id = _request_id(event, context)
    try:
        method, path = _route(event)
        if method == "GET" and path.rstrip("/").endswith("/health"):
            return _answer(200, {"status": "ok"})
        if method == "GET":
            return _answer(200, _describe(load_model()))
        if method != "POST":
            raise Refusal(405, "method_not_allowed", f"{method} is not supported",
                          "POST an image to predict, GET /health or GET for the model")
        body = _predict(event, started)
        log.info("%s predicted %s (%.3f) in %.1f ms", request_id, body["predicted"],
                 body["confidence"], body["latency_ms"])
        return _answer(200, body)
    except Refusal as exc:
        log.info("%s refused: %s %s", request_id, exc.status, exc.code)
        return _answer(exc.status, {"error": exc.code, "detail": exc.detail, "hint": exc.hint})
    except ServeError as exc:  # a request rule of serve/api/rules.py
        log.info("%s refused: %s %s", request_id, exc.status, exc.code)
        return _answer(exc.status, exc.body())
    except Exception:  # a fault of ours, never of the input: logged with its traceback
        log.exception("%s failed", request_id)
        return _answer(500, {"error": "internal", "detail": "internal error; it has been "
                             "logged", "hint": f"quote request id {request_id}"})


def _predict(event: dict[str, Any], started: float) -> dict[str, Any]:
    max_upload = _env_int("VISIONDECK_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES)
    data = _image_bytes(event, max_upload)
    model = load_model()
    top_k = _top_k(event, len(model.bundle.classes), model.top_k)
    spec = model.bundle.input
    limits = model_decode_limits(
        spec, max_pixels=_env_int("VISIONDECK_MAX_PIXELS", DEFAULT_MAX_PIXELS),
        max_bytes=max_upload)
    try:
        decoded = decode_image(data, mode=spec.mode, limits=limits)  # type: ignore[arg-type]
    except ImageDecodeError as exc:
        raise Refusal(decode_error_status(exc), exc.problem.value, exc.message,
                      exc.hint) from None
    batch = model.bundle.prepare(decoded.array)[None]
    answer_fields = _answer_fields(model, batch, top_k)
    return {
        "predicted": answer_fields["predicted"],
        "confidence": answer_fields["confidence"],
        "unknown": answer_fields["unknown"],
        "top_k": answer_fields["top_k"],
        "model": {"name": model.bundle.name, "version": model.version,
                  "variant": model.predictor.variant},
        "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
        "image": {"width": decoded.info.width, "height": decoded.info.height,
                  "sha256": hashlib.sha256(data).hexdigest()},
        "task": answer_fields["task"], "labels": answer_fields.get("labels"),
        "predicted_labels": answer_fields.get("predicted_labels"),
    }


def _answer_fields(model: Model, batch: Any, top_k: int) -> dict[str, Any]:
    """predicted, confidence, unknown, top_k and task; for a multi-label Bundle also labels
    and predicted_labels, built by the API's own `label_answer` (one shape for both)."""
    bundle = model.bundle
    if not bundle.multilabel:
        [answer] = model.predictor.predict_prepared(batch, top_k=top_k)
        return {"predicted": answer.label, "confidence": answer.probability,
                "unknown": answer.unknown, "task": "single",
                "top_k": [{"class": label, "probability": p} for label, p in answer.topk]}
    calibration = bundle.calibration
    logits = model.predictor.logits(batch)
    probabilities = calibration.label_probabilities(logits)
    unknown = bool(calibration.unknown(logits, probabilities)[0])
    fields = label_answer(bundle.classes, probabilities[0], calibration.thresholds(bundle.classes),
                          top_k, 0)
    return {**fields, "unknown": unknown}


# ------------------------------------------------------------------------------ events


def _route(event: dict[str, Any]) -> tuple[str, str]:
    """(METHOD, path) of a v1 (REST API) or v2 (HTTP API) proxy event."""
    if not isinstance(event, dict):
        raise Refusal(400, "bad_event", "the event is not an API Gateway proxy event")
    http = (event.get("requestContext") or {}).get("http") or {}
    method = event.get("httpMethod") or http.get("method") or ""
    path = event.get("rawPath") or event.get("path") or http.get("path") or "/"
    if not method:
        raise Refusal(400, "bad_event", "the event has no HTTP method",
                      "invoke through API Gateway (REST or HTTP API, proxy integration)")
    return str(method).upper(), str(path)


def _headers(event: dict[str, Any]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}


def _query(event: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (event.get("queryStringParameters") or {}).items()}


def _image_bytes(event: dict[str, Any], max_bytes: int) -> bytes:
    """The uploaded image's bytes; 413 is decided from the body's length before decoding."""
    body = event.get("body")
    if body is None or body == "":
        raise Refusal(400, "no_image", "the request has no body",
                      "send the image as the body, or JSON {\"image\": \"<base64>\"}")
    if not isinstance(body, str):
        raise Refusal(400, "bad_event", "the event body is not a string")
    content_type = _headers(event).get("content-type", "").split(";")[0].strip().lower()
    encoded = bool(event.get("isBase64Encoded"))
    # base64 carries 3 bytes in 4 characters; JSON adds its key and quotes
    if len(body) > (max_bytes + 2) // 3 * 4 + 1024:
        raise _too_large(f"the request body is {len(body):,} characters", max_bytes)
    raw = _b64(body, "the body") if encoded else _utf8(body)
    if content_type == "application/json" or (not content_type and raw[:1] == b"{"):
        raw = _from_json(raw)
    elif content_type and not (content_type.startswith("image/")
                               or content_type == "application/octet-stream"):
        raise Refusal(415, "unsupported_media_type",
                      f"cannot read an image from a {content_type!r} body",
                      "send the image bytes (image/*) or JSON {\"image\": \"<base64>\"}")
    if not raw:
        raise Refusal(400, "no_image", "the request holds no image")
    if len(raw) > max_bytes:
        raise _too_large(f"the image is {len(raw):,} bytes", max_bytes)
    return raw


def _utf8(body: str) -> bytes:
    """A text body's bytes (surrogate escapes round-trip to the bytes they stand for); a
    lone surrogate no encoding can hold is the client's broken text: 400."""
    try:
        return body.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise Refusal(400, "bad_body", "the body is not valid text",
                      "send the image as binary (base64 through API Gateway)") from None


def _from_json(raw: bytes) -> bytes:
    payload = parse_json_body(raw)  # 400 for invalid or too deeply nested JSON
    image = payload.get("image") if isinstance(payload, dict) else None
    if not isinstance(image, str) or not image:
        raise Refusal(400, "no_image", "the JSON body has no \"image\" string",
                      "send {\"image\": \"<base64 of the file>\"}")
    if image.startswith("data:"):
        image = image.partition(",")[2]  # a data URL from a browser
    return _b64(image, "image")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(400, "bad_base64", f"{what} is not valid base64") from None


def _too_large(what: str, limit: int) -> Refusal:
    return Refusal(413, "too_large", f"{what}; the limit is {limit:,} bytes",
                   "send a smaller image (VISIONDECK_MAX_UPLOAD_BYTES sets the limit)")


def _top_k(event: dict[str, Any], classes: int, model_top_k: int) -> int:
    """`?top_k=` by the REST API's rule (422 outside 1..100, checked before any int()),
    else the function's VISIONDECK_TOP_K; never more than the classes."""
    requested = parse_top_k(_query(event).get("top_k"))
    return min(classes, requested if requested is not None else model_top_k)


def _request_id(event: Any, context: Any) -> str:
    found = getattr(context, "aws_request_id", None)
    if not found and isinstance(event, dict):
        found = (event.get("requestContext") or {}).get("requestId")
    return str(found or uuid.uuid4().hex[:12])


def _answer(status: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(payload), "isBase64Encoded": False}


def _describe(model: Model) -> dict[str, Any]:
    bundle = model.bundle
    return {"name": bundle.name, "version": model.version, "variant": model.predictor.variant,
            "classes": list(bundle.classes), "input": bundle.input.to_dict(),
            "metrics": dict(bundle.info.get("metrics") or {}), "source": model.source}


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return max(1, int(text))
    except ValueError:
        log.warning("%s=%r is not an integer; using %d", name, text, default)
        return default


# ------------------------------------------------------------------------------- model


def load_model() -> Model:
    """The container's model, loaded on first use; 503 (retried next call) when it fails."""
    bundle_source = os.environ.get("VISIONDECK_BUNDLE", "").strip()
    s3_uri = os.environ.get("VISIONDECK_BUNDLE_S3", "").strip()
    variant = os.environ.get("VISIONDECK_VARIANT", "auto").strip() or "auto"
    key = (bundle_source, s3_uri, variant, os.environ.get("VISIONDECK_TOP_K", ""))
    with _LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        try:
            model = _load(bundle_source, s3_uri, variant)
        except Exception as exc:  # configuration or storage: the client can only retry
            log.exception("cannot load the model")
            detail = getattr(exc, "message", None) or str(exc)
            raise Refusal(503, "model_unavailable", f"the model could not be loaded: {detail}",
                          getattr(exc, "hint", None) or "check the function's configuration "
                          "and logs") from None
        _MODELS.clear()  # one model per container
        _MODELS[key] = model
        return model


def _configured_top_k() -> int:
    """VISIONDECK_TOP_K by the rule `?top_k=` and `visiondeck serve` follow: a value outside
    1..100, or not a whole number, stops the load (503 naming it) rather than being bent
    into range or replaced by the default without a word."""
    text = os.environ.get("VISIONDECK_TOP_K", "").strip()
    if not text:
        return DEFAULT_TOP_K
    try:
        value = parse_top_k(text)
    except ServeError as exc:
        raise BundleError(f"VISIONDECK_TOP_K={text[:20]!r}: {exc.message}",
                          hint=f"set VISIONDECK_TOP_K to a whole number from {TOP_K_MIN} to "
                               f"{TOP_K_MAX}, or leave it unset ({DEFAULT_TOP_K})") from None
    assert value is not None
    return value


def _load(bundle_source: str, s3_uri: str, variant: str) -> Model:
    started = time.perf_counter()
    top_k = _configured_top_k()  # before any download: a wrong setting fails at once
    if bool(bundle_source) == bool(s3_uri):
        raise BundleError("set exactly one of VISIONDECK_BUNDLE and VISIONDECK_BUNDLE_S3",
                          hint="VISIONDECK_BUNDLE=/opt/bundle (baked in) or "
                               "VISIONDECK_BUNDLE_S3=s3://bucket/prefix")
    if s3_uri:
        bundle = fetch_s3_bundle(s3_uri, variant)
    else:
        if bundle_source.startswith("models:/") and os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
            # only /tmp is writable on Lambda; the registry's cache defaults to ~/.cache
            os.environ.setdefault("VISIONDECK_MODEL_CACHE",
                                  str(Path(tempfile.gettempdir()) / "visiondeck-models"))
        bundle = load_bundle(bundle_source, check_files=False)
    check_servable(bundle)
    variant = bundle.resolve_variant(variant)
    onnx_file = bundle.onnx_path(variant)
    if not onnx_file.is_file():
        raise BundleError(f"bundle {bundle.path} has no {onnx_file.name}",
                          hint="copy the whole Bundle folder, or re-export the run")
    predictor = Predictor(bundle, variant=variant)
    predictor.logits(_zeros(bundle))  # create the session and warm it on the cold start
    digest = hashlib.sha256((bundle.path / "bundle.json").read_bytes())
    with onnx_file.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    model = Model(predictor, digest.hexdigest()[:12], s3_uri or bundle_source, top_k)
    log.info("loaded %s version %s (%s) from %s in %.2f s", bundle.name, model.version,
             variant, model.source, time.perf_counter() - started)
    return model


def _zeros(bundle: Bundle) -> Any:
    import numpy as np

    return np.zeros((1, *bundle.input.shape), dtype=np.float32)


def fetch_s3_bundle(uri: str, variant: str = "auto", *, root: Path | None = None) -> Bundle:
    """bundle.json + the variant's ONNX file of `s3://bucket/prefix`, into a /tmp folder.

    The weights are not fetched: the handler never needs them, and a cold start pays for
    every byte. Files land in a scratch folder renamed into place, so a failed download
    never leaves half a Bundle behind.
    """
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise BundleError(f"{uri!r} is not an s3://bucket/prefix URI",
                          hint="write VISIONDECK_BUNDLE_S3=s3://bucket/prefix")
    prefix = prefix.strip("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint or None)
    base = root or Path(tempfile.gettempdir()) / "visiondeck-bundles"
    target = base / hashlib.sha256(f"{uri}|{variant}".encode()).hexdigest()[:16]
    work = base / f".partial-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        _get(client, bucket, prefix, "bundle.json", work)
        bundle = load_bundle(work, check_files=False)
        _get(client, bucket, prefix, bundle.onnx_path(bundle.resolve_variant(variant)).name,
             work)
        if target.exists():
            _remove(target)
        os.replace(work, target)
    finally:
        if work.exists():
            _remove(work)
    return load_bundle(target, check_files=False)


def _get(client: Any, bucket: str, prefix: str, name: str, folder: Path) -> None:
    key = f"{prefix}/{name}" if prefix else name
    try:
        client.download_file(bucket, key, str(folder / name))
    except Exception as exc:
        raise BundleError(f"cannot download s3://{bucket}/{key}: {exc}",
                          hint="check VISIONDECK_BUNDLE_S3, the bucket policy and the "
                               "function's role (s3:GetObject on the prefix)") from None


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
