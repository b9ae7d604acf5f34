"""Answering a prediction request: read the images, admit them, classify, record.

The service logic behind `POST /predict` and `/predict/batch`, shared by the FastAPI route
(serve/routes/predict.py) and the `/predict` fast path (serve/api/fast_predict.py), so both
apply the same rules in the same order:
1. the body is read within its route's rules (`api.bodies.read_images`: size, time,
   multipart by python-multipart);
2. only then are its images admitted to inference (`Engine.admit`): a client still
   sending its body holds a socket, never a place in the queue, so slow bodies cannot
   turn honest requests into 503s;
3. each image is prepared, run, answered, and its history row and observers notified.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from starlette.types import Receive

from visiondeck.imaging import ImageDecodeError
from visiondeck.serve.api.bodies import Upload, body_rules, read_images
from visiondeck.serve.errors import ServeError, error_answer
from visiondeck.serve.history.store import PredictionRecord, new_prediction_id
from visiondeck.serve.inference.engine import LoadedModel
from visiondeck.serve.inference.preprocess import PreparedImage
from visiondeck.serve.labelsets import (
    LabelSetError,
    label_answer,
    labels_from_text,
    stored_text,
)  # fmt: skip
from visiondeck.serve.monitoring.observers import PredictionEvent
from visiondeck.serve.services import Services
from visiondeck.serve.settings import BATCH_ROUTE

__all__ = ["model_ref", "predict_batch_request", "predict_request", "predict_upload"]

SEED_TOP = 3  # the CIFAR-10 seed API's `top3_predictions`


async def predict_request(services: Services, receive: Receive, content_type: str,
                          query_label: str | None, client: str, started: float,
                          top_k: int | None) -> dict[str, Any]:
    """`POST /predict`: the one image of the request, classified and recorded."""
    uploads, label = await read_images(receive, content_type, query_label,
                                       body_rules(services.settings, "/predict"))
    with services.engine.admit():
        return await predict_upload(services, uploads[0], label, client, "predict", started,
                                    top_k or services.settings.top_k)


async def predict_batch_request(services: Services, receive: Receive, content_type: str,
                                query_label: str | None, client: str, started: float,
                                top_k: int | None) -> dict[str, Any]:
    """`POST /predict/batch`: every image classified; a bad file fails alone."""
    uploads, label = await read_images(receive, content_type, query_label,
                                       body_rules(services.settings, BATCH_ROUTE))
    k = top_k or services.settings.top_k
    with services.engine.admit(len(uploads)):
        items = await asyncio.gather(*(_batch_item(services, upload, label, client, k)
                                       for upload in uploads))
    return {"results": list(items), "model": model_ref(services.engine.model),
            "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


async def _batch_item(services: Services, upload: Upload, label: str | None, client: str,
                      top_k: int) -> dict[str, Any]:
    try:
        answer = await predict_upload(services, upload, label, client, "batch",
                                      time.perf_counter(), top_k)
        return {"file": upload.name, "ok": True, "prediction": answer, "error": None,
                "status": 200}
    except (ImageDecodeError, ServeError) as exc:  # this file fails alone, as /predict would
        refusal = error_answer(exc)
        assert refusal is not None  # error_answer maps both families
        status, body, _headers = refusal
        services.metrics.errors.labels(body["error"]).inc()
        return {"file": upload.name, "ok": False, "prediction": None, "error": body,
                "status": status}


def model_ref(model: LoadedModel) -> dict[str, str]:
    return {"name": model.name, "version": model.version, "variant": model.variant}


async def predict_upload(services: Services, upload: Upload, label: str | None, client: str,
                         endpoint: str, started: float, top_k: int) -> dict[str, Any]:
    """Classify one upload and record it: the answer, as the JSON of `PredictionResponse`.

    Built as a plain dict (the schema's field names, `class` for the class name) rather than
    through pydantic: this is the per-request hot path of the service, and the test suite
    validates the dict against `PredictionResponse` and the OpenAPI schema.
    """
    engine = services.engine
    model, prepared = await engine.prepare(upload.data)
    classes = model.bundle.classes
    true_labels = None
    if model.multilabel and label is not None:
        try:
            true_labels = labels_from_text(label, classes)
        except LabelSetError as exc:
            raise ServeError(str(exc), code="unknown_label", status=422,
                             hint="send labels of the served model, joined by |") from None
        label = stored_text(true_labels)
    row = await engine.infer(model, prepared)
    probabilities = row.probabilities
    prediction_id = new_prediction_id()
    stats = prepared.stats
    if model.label_thresholds is not None:
        fields = label_answer(classes, probabilities, model.label_thresholds, top_k, SEED_TOP)
    else:
        order = np.argsort(-probabilities, kind="stable")[: max(top_k, SEED_TOP)]
        scores = [(classes[i], round(float(probabilities[i]), 6)) for i in order]
        predicted = classes[row.predicted]
        fields = {
            "task": "single", "predicted": predicted, "prediction": predicted,
            "confidence": round(float(probabilities[row.predicted]), 6),
            "top_k": [{"class": name, "probability": p} for name, p in scores[:top_k]],
            "top3_predictions": [{"class": name, "confidence": p}
                                 for name, p in scores[:SEED_TOP]],
        }
    answer = {
        "id": prediction_id, "predicted": fields["predicted"],
        "confidence": fields["confidence"], "unknown": row.unknown, "top_k": fields["top_k"],
        "model": model_ref(model),
        "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
        "image": {"width": stats.width, "height": stats.height, "sha256": prepared.sha256},
        "label_token": services.label_token(prediction_id),
        "success": True, "prediction": fields["prediction"],
        "top3_predictions": fields["top3_predictions"], "task": fields["task"],
        "labels": fields.get("labels"), "predicted_labels": fields.get("predicted_labels"),
    }
    _record(services, model, prepared, answer, row.embedding, probabilities, label, client,
            endpoint, upload.data, true_labels)
    return answer


def _record(services: Services, model: LoadedModel, prepared: PreparedImage,
            answer: dict[str, Any], embedding: np.ndarray | None,
            probabilities: np.ndarray, label: str | None, client: str, endpoint: str,
            data: bytes, true_labels: list[str] | None = None) -> None:
    """Metrics, the history row (queued, never awaited) and the observers (which get the
    upload's bytes in `extra["upload"]`, for VISIONDECK_KEEP_UPLOADS)."""
    m = services.metrics
    predicted, confidence, unknown = answer["predicted"], answer["confidence"], answer["unknown"]
    predicted_labels = answer.get("predicted_labels")
    if predicted_labels is None:
        m.predictions.labels(model.name, predicted).inc()
    else:  # one series per label, never per label combination (2^K of them)
        m.observe_label_set(model.name, model.bundle.classes, predicted_labels)
    m.confidence.observe(confidence)
    if unknown:
        m.unknown.labels(model.name).inc()
    now = datetime.now(UTC)
    stats = prepared.stats
    if services.writer is not None:
        services.writer.submit(PredictionRecord(
            id=answer["id"], created_at=now, model_name=model.name,
            model_version=model.version,
            predicted=predicted if predicted_labels is None else stored_text(predicted_labels),
            confidence=confidence, unknown=unknown, top_k=answer["top_k"],
            latency_ms=answer["latency_ms"],
            image_sha256=prepared.sha256, image_width=stats.width, image_height=stats.height,
            endpoint=endpoint, label=label, client=client[:100], thumbnail=prepared.thumbnail,
            brightness=stats.brightness, contrast=stats.contrast,
            predicted_labels=predicted_labels, true_labels=true_labels))
    if len(services.observers):
        services.observers.notify(PredictionEvent(
            id=answer["id"], created_at=now, model_name=model.name,
            model_version=model.version, classes=tuple(model.bundle.classes),
            probabilities=probabilities, predicted=predicted, confidence=confidence,
            unknown=unknown, latency_ms=answer["latency_ms"], image=stats,
            image_sha256=prepared.sha256, label=label, embedding=embedding,
            extra={"upload": data}, predicted_labels=(
                None if predicted_labels is None else tuple(predicted_labels))))
