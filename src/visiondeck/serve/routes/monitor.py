"""GET /monitor/summary: the drift monitor's state as JSON (the /monitor web page reads it).

The shape is a contract with the web page; keys may be added, never changed:

    {"model": {"name", "version"}, "window": {"size", "capacity", "since"},
     "volume": [{"t", "count"}], "class_mix": {"reference": {cls: frac}, "live": {...}},
     "confidence": {"reference_mean", "live_mean", "series": [{"t", "mean"}]},
     "drift": [{"feature", "method", "score", "threshold", "alarm", "n"}],
     "alarm": bool, "live_accuracy": {"labelled", "accuracy", ...}, "status", "reference"}

404 (`monitor_off` or `no_reference`) when the server does not monitor, or the served
Bundle was exported without reference statistics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from visiondeck.serve.api.deps import PredictCaller, ServicesDep
from visiondeck.serve.api.schemas import ErrorBody
from visiondeck.serve.errors import ServeError
from visiondeck.serve.monitoring.drift import DriftObserver
from visiondeck.serve.monitoring.label_rates import label_rates, read_live_counts
from visiondeck.serve.services import Services

__all__ = ["router"]

log = logging.getLogger("visiondeck.serve")
router = APIRouter(tags=["monitor"])
_REFRESH_AT_MOST_S = 1.0  # re-read live accuracy for a summary at most this often


def find_drift_observer(services: Services) -> DriftObserver | None:
    """The app's drift observer (None when monitoring is off)."""
    return next((o for o in services.observers if isinstance(o, DriftObserver)), None)


def _iso(value: datetime | float | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.isoformat().replace("+00:00", "Z")


async def _multilabel_summary(services: Services, observer: DriftObserver, model: Any,
                              state: Any) -> dict[str, Any]:
    """A multi-label model's summary: each label's positive rate, live against reference."""
    classes = list(model.bundle.classes)
    if services.store is not None:
        images, positives = await asyncio.to_thread(
            read_live_counts, services.store, model.version, classes, observer.capacity)
        source = "history"
    else:  # this process's counters since it started
        sample = services.metrics.registry.get_sample_value
        images = int(sample("visiondeck_multilabel_predictions_total",
                            {"model": model.name}) or 0)
        positives = [int(sample("visiondeck_label_positives_total",
                                {"model": model.name, "label": c}) or 0) for c in classes]
        source = "process"
    reference = None if state is None else state.reference
    return {
        "model": {"name": model.name, "version": model.version}, "task": "multilabel",
        "window": {"size": images, "capacity": observer.capacity, "source": source},
        "labels": label_rates(classes, images, positives, reference),
        "reference": None if reference is None else {
            "id": reference.id, "n": reference.n, "source": reference.source,
            "created_at": reference.created_at},
    }


@router.get("/monitor/summary", responses={404: {"model": ErrorBody},
                                           503: {"model": ErrorBody}})
async def monitor_summary(services: ServicesDep, caller: PredictCaller) -> JSONResponse:
    """Drift scores, alarms, class mix, confidence and live accuracy of the served model."""
    observer = find_drift_observer(services)
    if observer is None:
        raise ServeError("drift monitoring is off on this server", code="monitor_off",
                         status=404, hint="start the server with VISIONDECK_MONITOR=true")
    model = services.engine.model  # 503 until a model is loaded
    state = observer.current()
    if model.multilabel:
        return JSONResponse(await _multilabel_summary(services, observer, model, state))
    if state is None or state.reference is None or state.window is None:
        raise ServeError(f"the served model {model.name} {model.version} has no reference "
                         "statistics, so drift cannot be measured", code="no_reference",
                         status=404, hint="re-export the run with this VisionDeck "
                                          "(`visiondeck export RUN`) and serve that Bundle")
    database_up = services.writer is None or services.writer.healthy  # else: last figure
    if (services.store is not None and database_up
            and time.monotonic() - state.refreshed_at > _REFRESH_AT_MOST_S):
        try:
            await asyncio.to_thread(observer.refresh_accuracy, state)
        except Exception as exc:  # the database is down: report the last figure
            log.debug("live accuracy refresh failed: %s", exc)
    result = observer.assessment(state)
    assert result is not None
    series = observer.series(state)
    reference = state.reference
    body: dict[str, Any] = {
        "model": {"name": state.name, "version": state.version},
        "window": {"size": result.window_size, "capacity": state.window.capacity,
                   "since": _iso(state.window.since)},
        "volume": [{"t": _iso(t), "count": count} for t, count, _ in series],
        "class_mix": {"reference": result.class_mix_reference, "live": result.class_mix_live},
        "confidence": {"reference_mean": result.confidence_reference_mean,
                       "live_mean": result.confidence_live_mean,
                       "series": [{"t": _iso(t), "mean": round(mean, 6)}
                                  for t, _, mean in series]},
        "drift": [row.to_dict() for row in result.features],
        "alarm": result.alarm,
        "live_accuracy": result.live_accuracy.to_dict(),
        "status": result.status,
        "accuracy_alarm": result.accuracy_alarm,
        "reference": {"id": reference.id, "n": reference.n, "source": reference.source,
                      "accuracy": reference.accuracy, "created_at": reference.created_at},
        "thresholds": result.to_dict()["thresholds"],
    }
    return JSONResponse(body)
