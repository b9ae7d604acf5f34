"""The review queue: GET /review (the page), GET /review/queue (its JSON), and
GET /predictions/{id}/image (the original upload, when the server kept it).

The ranking lives in serve/history/review.py; this module only reads the request, finds
the drift cut of the served model, and shapes the answer. Labels are not set here: the
page sends them to `PUT /predictions/{id}/label` (serve/routes/history.py), so the one
label rule applies - a prediction's label token, or an admin credential. A reviewer holds
no tokens for other clients' predictions, so labelling from the queue takes an admin key.

Images: the queue shows the original upload when the server keeps uploads
(`VISIONDECK_KEEP_UPLOADS`), else the row's thumbnail, else nothing (the page says so).
Grad-CAM needs the original (the page posts it to `/explain`).
"""

from __future__ import annotations

import asyncio
import mimetypes
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from visiondeck.monitor.retrain import find_kept_upload
from visiondeck.serve.api.deps import PredictCaller, ServicesDep
from visiondeck.serve.api.schemas import ErrorBody
from visiondeck.serve.errors import ServeError
from visiondeck.serve.history.review import (
    DriftCut,
    ReviewPage,
    ReviewQuery,
    ReviewSort,
    ReviewStatus,
    review_queue,
)
from visiondeck.serve.routes.history import PredictionId, _call, _store
from visiondeck.serve.routes.monitor import find_drift_observer
from visiondeck.serve.routes.pages import _render
from visiondeck.serve.services import Services

__all__ = ["DRIFT_PERCENTILE", "ReviewQueueResponse", "drift_cut", "router"]

router = APIRouter(tags=["review"])
#: a row is "drifted" above this percentile of the reference images' embedding residual
DRIFT_PERCENTILE = 99
_ERRORS = {404: {"model": ErrorBody}, 503: {"model": ErrorBody}}


class ReviewQueueResponse(BaseModel):
    total: int = Field(description="rows of this status under these filters")
    waiting: int = Field(description="rows of these filters without a label")
    labelled: int = Field(description="rows of these filters with a label")
    limit: int
    offset: int
    drift: dict[str, Any] | None = Field(
        description="the cut that marks a row drifted ({reference, residual, percentile}); "
        "null when the served model's drift is not watched"
    )
    images: dict[str, bool] = Field(
        description="what the server keeps: originals (keep_uploads) and thumbnails"
    )
    items: list[dict[str, Any]] = Field(
        description="predictions (as /predictions) with margin, entropy, drifted, has_thumbnail"
    )


def drift_cut(services: Services) -> DriftCut | None:
    """The served model's drift cut, or None when its drift is not watched (monitoring
    off, or a Bundle without an embedding reference)."""
    observer = find_drift_observer(services)
    state = None if observer is None else observer.current()
    reference = None if state is None else state.reference
    if reference is None or reference.embedding is None:
        return None
    return DriftCut(reference.id, float(reference.embedding.residual.quantiles[DRIFT_PERCENTILE]))


@router.get("/review", response_class=HTMLResponse, include_in_schema=False)
async def review_page(request: Request) -> HTMLResponse:
    """One prediction at a time, most informative first; digit keys label, arrows skip."""
    settings = request.app.state.services.settings
    return _render(
        request,
        "review.html",
        "review",
        kept_uploads=settings.keep_uploads is not None,
        thumbnails=settings.store_thumbnails,
    )


@router.get("/review/queue", response_model=ReviewQueueResponse, responses=_ERRORS)
async def get_review_queue(
    services: ServicesDep,
    caller: PredictCaller,
    model_version: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    status: ReviewStatus = "waiting",
    sort: ReviewSort = "priority",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JSONResponse:
    """Stored predictions ordered by how much a label would teach the model: flagged
    unknown or drifted first, then the smallest top-1/top-2 margin, then the highest
    entropy (see serve/history/review.py); with the counts waiting and labelled.

    Refused (409) while a multi-label model is served: its order (top-1/top-2 margin,
    softmax entropy) and its one-key labelling assume one class per image."""
    if services.engine.model.multilabel:
        raise ServeError("the review queue serves single-label models only; this model "
                         "answers a set of labels", code="multilabel_review", status=409,
                         hint="label multi-label predictions with PUT "
                              "/predictions/{id}/label and a `labels` list")
    store = _store(services)

    def read() -> tuple[ReviewPage, DriftCut | None]:
        cut = drift_cut(services)
        return review_queue(
            store,
            ReviewQuery(
                model_version=model_version,
                since=since,
                until=until,
                status=status,
                sort=sort,
                drift=cut,
                limit=limit,
                offset=offset,
            ),
        ), cut

    page, cut = await _call(read)
    settings = services.settings
    body = ReviewQueueResponse(
        total=page.total,
        waiting=page.waiting,
        labelled=page.labelled,
        limit=limit,
        offset=offset,
        drift=None
        if cut is None
        else {"reference": cut.reference, "residual": cut.residual, "percentile": DRIFT_PERCENTILE},
        images={
            "originals": settings.keep_uploads is not None,
            "thumbnails": settings.store_thumbnails,
        },
        items=[item.to_json() for item in page.items],
    )
    return JSONResponse(body.model_dump(), headers={"X-Total-Count": str(page.total)})


@router.get(
    "/predictions/{prediction_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, **_ERRORS},
)
async def get_kept_image(
    prediction_id: PredictionId, services: ServicesDep, caller: PredictCaller
) -> Response:
    """The image a prediction was made from, as the client sent it: only when the server
    keeps uploads (VISIONDECK_KEEP_UPLOADS) and kept this one."""
    root = services.settings.keep_uploads
    if root is None:
        raise ServeError(
            "this server does not keep uploaded images",
            code="uploads_not_kept",
            status=404,
            hint="start it with VISIONDECK_KEEP_UPLOADS=DIR to keep "
            "the images of later predictions",
        )
    record = await _call(_store(services).get, prediction_id)
    if record is None:
        raise ServeError("no such prediction", code="not_found", status=404)
    path = await asyncio.to_thread(find_kept_upload, root, record.image_sha256)
    if path is None:
        raise ServeError(
            "the image of this prediction was not kept",
            code="image_not_kept",
            status=404,
            hint="it was predicted before uploads were kept, or "
            "dropped while the server was overloaded",
        )
    data = await asyncio.to_thread(path.read_bytes)
    media = mimetypes.types_map.get(path.suffix.lower(), "application/octet-stream")
    return Response(
        data,
        media_type=media if media.startswith("image/") else "application/octet-stream",
        headers={
            "Cache-Control": "private, max-age=86400",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )
