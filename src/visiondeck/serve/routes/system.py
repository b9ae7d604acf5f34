"""GET /health, /ready, /model and /metrics: what operators and load balancers ask.

/health, /ready and /model answer anyone (probes send no key); /ready keeps its error texts
for callers entitled to them. /metrics follows `require_api_key` like the rest of the
traffic data: its series count predictions per class, live accuracy and drift, so a server
that wants a key for history wants one here too (Prometheus sends it with
`authorization: {credentials_file: ...}`; see deploy/README.md).
"""

from __future__ import annotations

import sys
import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from visiondeck.serve.api.deps import MaybeCaller, ServicesDep, UnmeteredCaller
from visiondeck.serve.api.schemas import (
    ErrorBody,
    HealthResponse,
    ModelInfo,
    ModelRef,
    ReadyResponse,
)
from visiondeck.serve.metrics import CONTENT_TYPE_LATEST

__all__ = ["router"]

router = APIRouter(tags=["system"])


@router.get("/health", response_model=HealthResponse)
async def health(services: ServicesDep) -> HealthResponse:
    """Alive (depends on nothing: not the model, not the database)."""
    return HealthResponse(status="ok", uptime_s=round(time.monotonic() - services.started_at, 3))


@router.get("/ready", response_model=ReadyResponse,
            responses={503: {"model": ReadyResponse, "description": "model not loaded"}})
async def ready(services: ServicesDep, caller: MaybeCaller) -> JSONResponse:
    """Ready when the model is loaded and warmed; the database only degrades readiness.

    The database's error text names its host, port and user: only an admin credential
    sees it (the writer logs every failure for operators); anyone else gets the coarse
    state, ok/degraded/off. The model's load error goes to whoever may predict, as
    /predict's own 503 would tell them.
    """
    admin = caller is not None and "admin" in caller.scopes
    may_predict = caller is not None or not services.auth.require_for_predict
    engine = services.engine
    model = engine._model
    writer = services.writer
    body = ReadyResponse(
        ready=model is not None,
        model=None if model is None else ModelRef(name=model.name, version=model.version,
                                                  variant=model.variant),
        database="off" if writer is None else writer.status,
        database_pending=0 if writer is None else writer.pending,
        database_error=writer.last_error if admin and writer is not None else None,
        queue=engine.batcher.queued, in_flight=engine.in_flight,
        torch_loaded="torch" in sys.modules, error=engine.load_error if may_predict else None,
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
        task=bundle.task,
    )


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"model": ErrorBody}})
async def metrics(services: ServicesDep, caller: UnmeteredCaller) -> Response:
    """Prometheus text format (with `require_api_key`, for a key; never rate limited)."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
