"""GET /health, /ready, /model and /metrics: what operators and load balancers ask."""

from __future__ import annotations

import sys
import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from visiondeck.serve.api.deps import ServicesDep
from visiondeck.serve.api.schemas import HealthResponse, ModelInfo, ModelRef, ReadyResponse
from visiondeck.serve.metrics import CONTENT_TYPE_LATEST

__all__ = ["router"]

router = APIRouter(tags=["system"])


@router.get("/health", response_model=HealthResponse)
async def health(services: ServicesDep) -> HealthResponse:
    """Alive (depends on nothing: not the model, not the database)."""
    return HealthResponse(status="ok", uptime_s=round(time.monotonic() - services.started_at, 3))


@router.get("/ready", response_model=ReadyResponse,
            responses={503: {"model": ReadyResponse, "description": "model not loaded"}})
async def ready(services: ServicesDep) -> JSONResponse:
    """Ready when the model is loaded and warmed; the database only degrades readiness."""
    engine = services.engine
    model = engine._model
    writer = services.writer
    body = ReadyResponse(
        ready=model is not None,
        model=None if model is None else ModelRef(name=model.name, version=model.version,
                                                  variant=model.variant),
        database="off" if writer is None else writer.status,
        database_pending=0 if writer is None else writer.pending,
        database_error=None if writer is None else writer.last_error,
        queue=engine.batcher.queued, in_flight=engine.in_flight,
        torch_loaded="torch" in sys.modules, error=engine.load_error,
    )
    return JSONResponse(body.model_dump(), status_code=200 if model is not None else 503)


@router.get("/model", response_model=ModelInfo)
async def model_info(services: ServicesDep) -> ModelInfo:
    """The served Bundle: classes, input preparation, calibration, metrics, version."""
    model = services.engine.model
    bundle = model.bundle
    skip = {"classes", "input", "calibration", "metrics", "variants", "model", "name",
            "source_run"}
    return ModelInfo(
        name=model.name, version=model.version, variant=model.variant,
        architecture=bundle.architecture, classes=list(bundle.classes),
        input=bundle.input.to_dict(), calibration=bundle.calibration.to_dict(),
        metrics=dict(bundle.info.get("metrics") or {}), variants=sorted(bundle.variants),
        created_at=bundle.info.get("created_at"), loaded_at=model.loaded_at.isoformat(),
        load_seconds=round(model.load_seconds, 4),
        source=model.source if model.source.startswith("models:/") else bundle.path.name,
        max_batch=model.max_batch, threads=model.threads,
        bundle={k: v for k, v in bundle.info.items() if k not in skip},
    )


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
