"""POST /predict, /predict/batch and /explain."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from visiondeck.imaging import decode_image, model_decode_limits
from visiondeck.serve.api.bodies import body_rules, read_images
from visiondeck.serve.api.deps import PredictCaller, ServicesDep
from visiondeck.serve.api.rules import TOP_K_MAX, TOP_K_MIN
from visiondeck.serve.api.schemas import (
    BatchResponse,
    ClassScore,
    ErrorBody,
    ExplainResponse,
    ModelRef,
    PredictionResponse,
)  # fmt: skip
from visiondeck.serve.errors import ServeError
from visiondeck.serve.predictions import model_ref, predict_batch_request, predict_request

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
        (401, "credential missing or wrong"), (408, "the body did not arrive in time"),
        (413, "upload too large"),
        (415, "not a supported image"), (422, "image unreadable or request invalid"),
        (429, "rate limited"), (503, "overloaded or model not loaded"))
}
TopK = Annotated[int | None, Query(ge=TOP_K_MIN, le=TOP_K_MAX, description="classes to return")]


@router.post("/predict", response_model=PredictionResponse, responses=_ERRORS,
             openapi_extra=_body_doc(False))
@router.post("/predict/", include_in_schema=False)  # the dandelion seed's clients post here
async def predict(request: Request, services: ServicesDep, caller: PredictCaller,
                  top_k: TopK = None) -> JSONResponse:
    """Classify one image: top-k calibrated probabilities, unknown flag, model version."""
    return JSONResponse(await predict_request(
        services, request.receive, request.headers.get("content-type", ""),
        request.query_params.get("label"), caller.id, time.perf_counter(), top_k))


@router.post("/predict/batch", response_model=BatchResponse, responses=_ERRORS,
             openapi_extra=_body_doc(True))
async def predict_batch(request: Request, services: ServicesDep, caller: PredictCaller,
                        top_k: TopK = None) -> JSONResponse:
    """Classify many images in one request; a bad file fails alone, not the batch."""
    return JSONResponse(await predict_batch_request(
        services, request.receive, request.headers.get("content-type", ""),
        request.query_params.get("label"), caller.id, time.perf_counter(), top_k))


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
    uploads, _label = await read_images(request.receive, request.headers.get("content-type", ""),
                                        None, body_rules(s, "/explain"))
    with services.engine.admit():
        model = services.engine.model
        spec = model.bundle.input
        limits = model_decode_limits(spec, max_pixels=s.max_pixels,
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
        target_layer=result.target_layer, model=ModelRef(**model_ref(model)),
        top_k=[ClassScore(class_name=classes[i], probability=round(float(
            result.probabilities[i]), 6)) for i in order],
        overlay_png_base64=b64(result.overlay_png), heatmap_png_base64=b64(result.heatmap_png),
        image_png_base64=b64(result.image_png),
        latency_ms=round((time.perf_counter() - started) * 1000, 3))
