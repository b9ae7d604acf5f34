"""The seam for anything that watches live predictions (drift monitoring, live accuracy).

After each prediction is answered, the service hands a `PredictionEvent` to every
registered observer. Observers run on the event loop right after the response is built,
so `observe` must be quick (update counters, append to a window); heavy work belongs in a
thread of the observer's own. An observer that raises is logged and counted, never allowed
to fail a prediction.

Register one with `create_app(settings, observers=[...])` or, later,
`app.state.services.observers.add(observer)`. An observer may also implement
`metrics(registry)` to add its own Prometheus series to `/metrics` (called once, at
registration) and `close()` (called on shutdown).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["ImageStats", "ObserverHub", "PredictionEvent", "PredictionObserver"]

log = logging.getLogger("visiondeck.serve")


@dataclass(frozen=True)
class ImageStats:
    """Cheap statistics of the decoded image (before resizing), for input drift."""

    width: int
    height: int
    brightness: float  # mean of the 0..255 pixels
    contrast: float  # their standard deviation
    channels: int
    notes: tuple[str, ...] = ()  # decoder notes: cmyk, alpha, exif_rotated, ...


@dataclass(frozen=True)
class PredictionEvent:
    """One answered prediction as observers see it."""

    id: str
    created_at: datetime
    model_name: str
    model_version: str
    classes: tuple[str, ...]
    probabilities: np.ndarray  # calibrated, float64 [K], index order of `classes`
    predicted: str
    confidence: float
    unknown: bool
    latency_ms: float
    image: ImageStats
    image_sha256: str
    label: str | None = None  # the client's label, when it sent one
    embedding: np.ndarray | None = None  # the model's "embedding" output, when it has one
    extra: dict[str, Any] = field(default_factory=dict)
    #: multi-label models: the labels that passed their thresholds (None: single-label)
    predicted_labels: tuple[str, ...] | None = None


@runtime_checkable
class PredictionObserver(Protocol):
    def observe(self, event: PredictionEvent) -> None: ...


class ObserverHub:
    """The registered observers; `notify` shields the request path from their failures."""

    def __init__(self, observers: list[PredictionObserver] | None = None) -> None:
        self._observers: list[PredictionObserver] = []
        self._registry: Any = None
        self.failures = 0
        for observer in observers or []:
            self.add(observer)

    def bind_metrics(self, registry: Any) -> None:
        """Give later and earlier observers the app's Prometheus registry."""
        self._registry = registry
        for observer in self._observers:
            self._register_metrics(observer)

    def add(self, observer: PredictionObserver) -> None:
        if not callable(getattr(observer, "observe", None)):
            raise TypeError(f"{observer!r} has no observe(event) method")
        self._observers.append(observer)
        if self._registry is not None:
            self._register_metrics(observer)

    def remove(self, observer: PredictionObserver) -> None:
        self._observers.remove(observer)

    def __len__(self) -> int:
        return len(self._observers)

    def __iter__(self):
        return iter(list(self._observers))

    def notify(self, event: PredictionEvent) -> None:
        for observer in self._observers:
            try:
                observer.observe(event)
            except Exception:
                self.failures += 1
                log.exception("prediction observer %r failed", observer)

    def close(self) -> None:
        for observer in self._observers:
            close = getattr(observer, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("closing observer %r failed", observer)

    def _register_metrics(self, observer: PredictionObserver) -> None:
        hook = getattr(observer, "metrics", None)
        if callable(hook):
            hook(self._registry)
