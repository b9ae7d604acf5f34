"""GET /predictions (filters, paging, CSV/JSON export), one prediction, its thumbnail,
and PUT of the true label (which monitoring uses for live accuracy)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response

from visiondeck.serve.api.deps import PredictCaller, ServicesDep, UnmeteredCaller
from visiondeck.serve.api.schemas import ErrorBody, LabelRequest, PredictionPage
from visiondeck.serve.errors import ServeError
from visiondeck.serve.history.store import (
    PredictionQuery,
    PredictionStore,
    StoreUnavailable,
    to_csv,
)
from visiondeck.serve.labelsets import LabelSetError, check_label_set, stored_text
from visiondeck.serve.services import Services

__all__ = ["router"]

router = APIRouter(tags=["history"])
PredictionId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="prediction id")]
_ERRORS = {404: {"model": ErrorBody}, 503: {"model": ErrorBody}}


def _store(services: Services) -> PredictionStore:
    if services.store is None:
        raise ServeError("this server does not record predictions", code="store_off",
                         status=404, hint="start it without --no-store")
    return services.store


async def _call(fn, *args):
    try:
        return await asyncio.to_thread(fn, *args)
    except ServeError:
        raise
    except Exception as exc:
        raise StoreUnavailable(f"the prediction database is unavailable "
                               f"({type(exc).__name__})",
                               hint="predictions are still answered and queued; retry later"
                               ) from None


@router.get("/predictions", response_model=PredictionPage, responses={
    200: {"content": {"text/csv": {"schema": {"type": "string"}}},
          "description": "a page of predictions (JSON), or all of them as CSV (format=csv)"},
    **_ERRORS})
async def list_predictions(
    services: ServicesDep, caller: PredictCaller,
    predicted: Annotated[str | None, Query(alias="class", max_length=200)] = None,
    model_version: Annotated[str | None, Query(max_length=64)] = None,
    min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    unknown: bool | None = None,
    labelled: bool | None = None,
    sha256: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$",
                                        description="only this image (its SHA-256)")] = None,
    label: Annotated[str | None, Query(
        max_length=200, description="rows predicting this label: in the passing set of a "
        "multi-label row, the predicted class of a single-label one")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    order: Literal["newest", "oldest"] = "newest",
    format: Literal["json", "csv"] = "json",
    thumbnails: bool = False,
) -> Response:
    """Stored predictions, newest first; `format=csv` downloads them; `sha256` finds every
    prediction of one image (the web page's comparison of model versions)."""
    query = PredictionQuery(predicted=predicted, model_version=model_version,
                            min_confidence=min_confidence, max_confidence=max_confidence,
                            since=since, until=until, unknown=unknown, labelled=labelled,
                            image_sha256=sha256, label=label, limit=limit, offset=offset,
                            newest_first=order == "newest")
    rows, total = await _call(_store(services).query, query)
    if format == "csv":
        return Response(to_csv(rows), media_type="text/csv", headers={
            "Content-Disposition": 'attachment; filename="predictions.csv"',
            "X-Total-Count": str(total)})
    page = PredictionPage(total=total, limit=limit, offset=offset,
                          items=[r.to_json(thumbnail=thumbnails) for r in rows])
    return JSONResponse(page.model_dump(), headers={"X-Total-Count": str(total)})


@router.get("/predictions/{prediction_id}", responses=_ERRORS)
async def get_prediction(prediction_id: PredictionId, services: ServicesDep,
                         caller: PredictCaller) -> dict:
    record = await _call(_store(services).get, prediction_id)
    if record is None:
        raise ServeError("no such prediction (or not written yet)", code="not_found",
                         status=404)
    return record.to_json()


@router.get("/predictions/{prediction_id}/thumbnail", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, **_ERRORS})
async def get_thumbnail(prediction_id: PredictionId, services: ServicesDep,
                        caller: PredictCaller) -> Response:
    record = await _call(_store(services).get, prediction_id)
    if record is None or record.thumbnail is None:
        raise ServeError("no thumbnail for this prediction", code="not_found", status=404)
    return Response(record.thumbnail, media_type="image/png",
                    headers={"Cache-Control": "private, max-age=86400"})


@router.put("/predictions/{prediction_id}/label", responses={
    400: {"model": ErrorBody, "description": "the body is not JSON"},
    422: {"model": ErrorBody, "description": "a label the served model does not know"},
    409: {"model": ErrorBody, "description": "answered, but its row is not written yet"},
    401: {"model": ErrorBody}, 403: {"model": ErrorBody}, **_ERRORS})
async def set_label(prediction_id: PredictionId, body: LabelRequest, services: ServicesDep,
                    caller: UnmeteredCaller) -> dict:
    """Attach the true label: with the prediction's `label_token`, or an admin credential.

    The token proves the caller saw that prediction; it does not stand in for the key a
    server with `require_api_key` asks of every caller (`UnmeteredCaller` first).
    """
    allowed = body.token is not None and services.check_label_token(prediction_id, body.token)
    if not allowed:
        services.auth.authorize(None if caller.anonymous else caller, "admin")
    label, labels = _true_label(services, body)
    store = _store(services)
    answer = {"id": prediction_id, "label": label}
    if labels is not None:
        answer["labels"] = labels
    if services.writer is not None and services.writer.update_pending(prediction_id, label,
                                                                      labels):
        return answer
    if not await _call(store.set_label, prediction_id, label, labels):
        if allowed:  # the token proves this deployment answered it: its row is on its way
            raise ServeError(
                "this prediction is not in the history yet (another worker or replica "
                "answered it and has not written its row)", code="not_recorded_yet",
                status=409, headers={"Retry-After": "1"},
                hint="send the label again in a second")
        raise ServeError("no such prediction", code="not_found", status=404)
    return answer


def _true_label(services: Services, body: LabelRequest) -> tuple[str | None, list[str] | None]:
    """(label text, true set): `label` for a single-label model; `labels` (a set of the
    model's labels) for a multi-label one, which also takes `label: null` to clear. The
    model served now decides (a label is checked against the classes it knows)."""
    model = services.engine.model
    if not model.multilabel:
        if body.labels is not None:
            raise ServeError("this model answers one class per image: send `label`, not "
                             "`labels`", code="not_multilabel", status=422)
        return (body.label.strip() if body.label else None), None
    if body.labels is None:
        if body.label is None:
            return None, None  # clears the label
        raise ServeError("this model answers a set of labels: send `labels`, a list of its "
                         "labels ([] for none of them)", code="labels_expected", status=422,
                         hint=f"its labels: {', '.join(model.bundle.classes)}")
    try:
        labels = check_label_set(body.labels, model.bundle.classes)
    except LabelSetError as exc:
        raise ServeError(str(exc), code="unknown_label", status=422) from None
    return stored_text(labels), labels

