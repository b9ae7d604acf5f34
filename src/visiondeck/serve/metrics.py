"""Prometheus metrics of one app, in a registry of its own (no process-wide globals).

With several uvicorn workers each process exports its own series; scrape each replica
(or put the workers behind separate ports) rather than relying on a shared registry.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class ServeMetrics:
    """Every series the service exports, named `visiondeck_*`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("visiondeck_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("visiondeck_http_request_seconds", "HTTP request latency",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.errors = Counter("visiondeck_errors", "refused or failed requests by kind",
                              ["kind"], registry=r)
        self.batch_size = Histogram("visiondeck_inference_batch_size",
                                    "images per ONNX Runtime run", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.inference = Histogram("visiondeck_inference_seconds",
                                   "ONNX Runtime time per batch", buckets=_LATENCY_BUCKETS,
                                   registry=r)
        self.preprocess = Histogram("visiondeck_preprocess_seconds",
                                    "decode + resize + normalise per image",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("visiondeck_predictions", "predictions by predicted class",
                                   ["model", "cls"], registry=r)
        self.label_images = Counter("visiondeck_multilabel_predictions",
                                    "images answered by a multi-label model", ["model"],
                                    registry=r)
        self.label_positives = Counter(
            "visiondeck_label_positives", "multi-label answers in which this label passed its "
            "threshold (its positive rate: this over visiondeck_multilabel_predictions)",
            ["model", "label"], registry=r)
        self.unknown = Counter("visiondeck_unknown_predictions",
                               "predictions flagged unknown (unlike the training data)",
                               ["model"], registry=r)
        self.confidence = Histogram("visiondeck_prediction_confidence",
                                    "calibrated top-1 probability",
                                    buckets=_CONFIDENCE_BUCKETS, registry=r)
        self.in_flight = Gauge("visiondeck_requests_in_flight", "predictions being worked on",
                               registry=r)
        self.store_pending = Gauge("visiondeck_store_pending",
                                   "prediction rows waiting to be written", registry=r)
        self.store_failures = Counter("visiondeck_store_write_failures",
                                      "failed attempts to write prediction rows", registry=r)
        self.reloads = Counter("visiondeck_model_reloads", "model loads after start-up",
                               ["outcome"], registry=r)
        self.model_info = Gauge("visiondeck_model_info", "the model being served (value 1)",
                                ["name", "version", "variant"], registry=r)
        self.ready = Gauge("visiondeck_ready", "1 once a model is loaded and warmed (what "
                           "/ready answers 200 for)", registry=r)

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        """One answered HTTP request, by route template (bounded label values); the one
        place both the app's metrics layer and the /predict fast path count requests."""
        self.requests.labels(method, path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def observe_label_set(self, model: str, classes: list[str],
                          predicted_labels: list[str]) -> None:
        """One multi-label answer: each label's series counts whether it passed (every label
        of the model gets a series, at 0 until it first passes, so its rate reads 0)."""
        self.label_images.labels(model).inc()
        passed = set(predicted_labels)
        for name in classes:
            self.label_positives.labels(model, name).inc(1 if name in passed else 0)

    def set_model(self, name: str, version: str, variant: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, variant).set(1)
        self.ready.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
