"""POST /admin/reload: swap in a new model version without dropping requests."""

from __future__ import annotations

from fastapi import APIRouter

from visiondeck.serve.api.deps import AdminCaller, ServicesDep
from visiondeck.serve.api.schemas import ErrorBody, ModelRef, ReloadResponse

__all__ = ["router"]

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload", response_model=ReloadResponse,
             responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody},
                        503: {"model": ErrorBody}})
async def reload(services: ServicesDep, caller: AdminCaller) -> ReloadResponse:
    """Re-read the configured model source (folder or models:/ alias); swap if it changed.

    Takes no path or URL from the client: the source is the one the server was started with.
    """
    engine = services.engine
    previous = engine._model.version if engine._model is not None else None
    model, swapped = await engine.reload()
    return ReloadResponse(swapped=swapped, previous_version=previous,
                          model=ModelRef(name=model.name, version=model.version,
                                         variant=model.variant),
                          load_seconds=round(model.load_seconds, 4))
