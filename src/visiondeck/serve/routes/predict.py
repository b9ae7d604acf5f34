"""POST /predict, /predict/batch and /explain."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from visiondeck.imaging import DecodeLimits, ImageDecodeError, decode_image
from visiondeck.serve.api.bodies import Upload, read_uploads, uploads_from_body
from visiondeck.serve.api.deps import PredictCaller, ServicesDep
from visiondeck.serve.api.schemas import (
    BatchItem,
    BatchResponse,
    ClassScore,
    ErrorBody,
    ExplainResponse,
    ModelRef,
    PredictionResponse,
)  # fmt: skip
from visiondeck.serve.errors import ServeError, error_answer
from visiondeck.serve.history.store import PredictionRecord, new_prediction_id
from visiondeck.serve.inference.engine import LoadedModel
from visiondeck.serve.inference.preprocess import PreparedImage
from visiondeck.serve.monitoring.observers import PredictionEvent
from visiondeck.serve.services import Services

__all__ = ["router"]

router = APIRouter(tags=["predict"])

_BINARY = {"type": "string", "format": "binary"}


def _body_doc(batch: bool) -> dict[str, Any]:
    files = {"files": {"type": "array", "items": _BINARY}} if batch else {
        "file": _BINARY, "image": _BINARY}
    b64 = ({"images": {"type": "array", "items": {"type": "string", "format": "byte"}}}
           if batch else {"image": {"type": "string", "format": "byte"}})
    content = {
        "multipart/form-data": {"schema": {"type": "object",
                                           "properties": {**files, "label": {"type": "string"}}}},
        "application/json": {"schema": {"type": "object", "required": list(b64),
                                        "properties": {**b64, "label": {"type": "string"}}}},
    }
    if not batch:
        content["image/*"] = {"schema": _BINARY}
        content["application/octet-stream"] = {"schema": _BINARY}
    return {"requestBody": {"required": True, "content": content}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "no image in the request, or a malformed body"),
        (401, "credential missing or wrong"), (413, "upload too large"),
        (415, "not a supported image"), (422, "image unreadable or request invalid"),
        (429, "rate limited"), (503, "overloaded or model not loaded"))
}
TopK = Annotated[int | None, Query(ge=1, le=100, description="classes to return")]


@router.post("/predict", response_model=PredictionResponse, responses=_ERRORS,
             openapi_extra=_body_doc(False))
async def predict(request: Request, services: ServicesDep, caller: PredictCaller,
                  top_k: TopK = None) -> JSONResponse:
    """Classify one image: top-k calibrated probabilities, unknown flag, model version."""
    started = time.perf_counter()
    with services.engine.admit():
        answer = await predict_body(services, request.headers.get("content-type", ""),
                                    await request.body(), request.query_params.get("label"),
                                    caller.id, started, top_k)
    return JSONResponse(answer)


async def predict_body(services: Services, content_type: str, body: bytes,
                       query_label: str | None, client: str, started: float,
                       top_k: int | None) -> dict[str, Any]:
    """`POST /predict` once its body is read within the size limit: the one image in it,
    classified and recorded. Shared by the route and the lane (serve/api/fast_predict.py)."""
    s = services.settings
    uploads, label = await uploads_from_body(content_type, body, query_label, max_files=1,
                                             max_bytes=s.max_upload_bytes)
    if len(uploads) != 1:
        raise ServeError(f"{len(uploads)} images sent; /predict takes one",
                         code="too_many_files", status=422, hint="use /predict/batch")
    return await predict_upload(services, uploads[0], label, client, "predict", started,
                                top_k or s.top_k)


@router.post("/predict/batch", response_model=BatchResponse, responses=_ERRORS,
             openapi_extra=_body_doc(True))
async def predict_batch(request: Request, services: ServicesDep, caller: PredictCaller,
                        top_k: TopK = None) -> BatchResponse:
    """Classify many images in one request; a bad file fails alone, not the batch."""
    started = time.perf_counter()
    s = services.settings
    with services.engine.admit():
        uploads, label = await read_uploads(request, max_files=s.max_batch_files,
                                            max_bytes=s.max_upload_bytes)
        with services.engine.admit(len(uploads)):
            items = await asyncio.gather(*(
                _batch_item(services, upload, label, caller.id, top_k or s.top_k)
                for upload in uploads))
    model = services.engine.model
    return BatchResponse(results=list(items), model=_ref(model),
                         latency_ms=round((time.perf_counter() - started) * 1000, 3))


async def _batch_item(services: Services, upload: Upload, label: str | None, client: str,
                      top_k: int) -> BatchItem:
    try:
        answer = await predict_upload(services, upload, label, client, "batch",
                                      time.perf_counter(), top_k)
        return BatchItem(file=upload.name, ok=True,
                         prediction=PredictionResponse.model_validate(answer))
    except (ImageDecodeError, ServeError) as exc:  # this file fails alone, as /predict would
        answer = error_answer(exc)
        assert answer is not None  # error_answer maps both families
        status, body, _headers = answer
        services.metrics.errors.labels(body["error"]).inc()
        return BatchItem(file=upload.name, ok=False, status=status, error=ErrorBody(**body))


def _ref(model: LoadedModel) -> ModelRef:
    return ModelRef(**_ref_dict(model))


async def predict_upload(services: Services, upload: Upload, label: str | None, client: str,
                         endpoint: str, started: float, top_k: int) -> dict[str, Any]:
    """Classify one upload and record it: the answer, as the JSON of `PredictionResponse`.

    Built as a plain dict (the schema's field names, `class` for the class name) rather than
    through pydantic: this is the per-request hot path of the service, and the test suite
    validates the dict against `PredictionResponse` and the OpenAPI schema.
    """
    engine = services.engine
    model, prepared = await engine.prepare(upload.data)
    row = await engine.infer(model, prepared)
    classes = model.bundle.classes
    probabilities = row.probabilities
    order = np.argsort(-probabilities, kind="stable")[: min(top_k, len(classes))]
    top = [{"class": classes[i], "probability": round(float(probabilities[i]), 6)}
           for i in order]
    predicted = classes[row.predicted]
    latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
    prediction_id = new_prediction_id()
    stats = prepared.stats
    answer = {
        "id": prediction_id, "predicted": predicted,
        "confidence": round(float(probabilities[row.predicted]), 6), "unknown": row.unknown,
        "top_k": top, "model": _ref_dict(model), "latency_ms": latency_ms,
        "image": {"width": stats.width, "height": stats.height, "sha256": prepared.sha256},
        "label_token": services.label_token(prediction_id),
    }
    _record(services, model, prepared, answer, row.embedding, probabilities, label, client,
            endpoint, upload.data)
    return answer


def _ref_dict(model: LoadedModel) -> dict[str, str]:
    return {"name": model.name, "version": model.version, "variant": model.variant}


def _record(services: Services, model: LoadedModel, prepared: PreparedImage,
            answer: dict[str, Any], embedding: np.ndarray | None,
            probabilities: np.ndarray, label: str | None, client: str, endpoint: str,
            data: bytes) -> None:
    """Metrics, the history row (queued, never awaited) and the observers (which get the
    upload's bytes in `extra["upload"]`, for VISIONDECK_KEEP_UPLOADS)."""
    m = services.metrics
    predicted, confidence, unknown = answer["predicted"], answer["confidence"], answer["unknown"]
    m.predictions.labels(model.name, predicted).inc()
    m.confidence.observe(confidence)
    if unknown:
        m.unknown.labels(model.name).inc()
    now = datetime.now(UTC)
    stats = prepared.stats
    if services.writer is not None:
        services.writer.submit(PredictionRecord(
            id=answer["id"], created_at=now, model_name=model.name,
            model_version=model.version, predicted=predicted, confidence=confidence,
            unknown=unknown, top_k=answer["top_k"], latency_ms=answer["latency_ms"],
            image_sha256=prepared.sha256, image_width=stats.width, image_height=stats.height,
            endpoint=endpoint, label=label, client=client[:100], thumbnail=prepared.thumbnail,
            brightness=stats.brightness, contrast=stats.contrast))
    if len(services.observers):
        services.observers.notify(PredictionEvent(
            id=answer["id"], created_at=now, model_name=model.name,
            model_version=model.version, classes=tuple(model.bundle.classes),
            probabilities=probabilities, predicted=predicted, confidence=confidence,
            unknown=unknown, latency_ms=answer["latency_ms"], image=stats,
            image_sha256=prepared.sha256, label=label, embedding=embedding,
            extra={"upload": data}))


# ------------------------------------------------------------------------------ explain


@router.post("/explain", response_model=ExplainResponse, responses={
    **_ERRORS, 200: {"content": {"image/png": {}}, "description": "JSON, or the overlay PNG"}},
    openapi_extra=_body_doc(False))
async def explain(
    request: Request, services: ServicesDep, caller: PredictCaller,
    method: Annotated[str, Query(description="CAM method, e.g. gradcam")] = "gradcam",
    class_name: Annotated[str | None, Query(alias="class", max_length=200,
                                            description="class to explain (default: predicted)")
                          ] = None,
    alpha: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
    scale: Annotated[int | None, Query(ge=1, le=16, description="enlarge the PNGs")] = None,
    format: Annotated[Literal["json", "png"], Query()] = "json",
) -> Any:
    """Grad-CAM: where the model looked. Loads torch on first use (the only endpoint that does)."""
    if not services.settings.explain:
        raise ServeError("explanations are turned off on this server", code="explain_disabled",
                         status=404)
    started = time.perf_counter()
    s = services.settings
    with services.engine.admit():
        uploads, _label = await read_uploads(request, max_files=1, max_bytes=s.max_upload_bytes)
        model = services.engine.model
        spec = model.bundle.input
        limits = DecodeLimits(max_pixels=min(s.max_pixels, spec.max_pixels),
                              max_bytes=s.max_upload_bytes)
        decoded = await asyncio.to_thread(decode_image, uploads[0].data, mode=spec.mode,
                                          limits=limits)
        result = await services.get_explainer().explain(
            model, decoded.array, method=method, class_name=class_name, alpha=alpha,
            scale=scale or max(1, 224 // spec.image_size))
    if format == "png":
        return Response(result.overlay_png, media_type="image/png",
                        headers={"X-Explained-Class": result.class_name})
    order = np.argsort(-result.probabilities, kind="stable")[: s.top_k]
    classes = model.bundle.classes

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return ExplainResponse(
        class_name=result.class_name, class_index=result.class_index, method=result.method,
        target_layer=result.target_layer, model=_ref(model),
        top_k=[ClassScore(class_name=classes[i], probability=round(float(
            result.probabilities[i]), 6)) for i in order],
        overlay_png_base64=b64(result.overlay_png), heatmap_png_base64=b64(result.heatmap_png),
        image_png_base64=b64(result.image_png),
        latency_ms=round((time.perf_counter() - started) * 1000, 3))
