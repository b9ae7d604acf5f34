"""The drift observer: live predictions against the served Bundle's reference statistics.

`create_app` registers one `DriftObserver` when `VISIONDECK_MONITOR` is on (the default).
It is inert for a Bundle exported without reference statistics ("no reference": the
`/monitor/summary` endpoint answers 404 and `/metrics` shows `visiondeck_monitor_reference
0`). Otherwise each prediction costs a few microseconds on the event loop: its image
statistics, confidence, probabilities and embedding projection go into a `SlidingWindow`,
and the projection is attached to the prediction's history row (for `visiondeck monitor
report`). The assessment is computed when asked (`/metrics` scrape, `/monitor/summary`)
and cached until the window changes.

Live accuracy comes from the labels in the prediction store (a client's `PUT
/predictions/{id}/label`, or a label sent with the image), re-read by a background thread
every `monitor_refresh_s`, so labelling never waits for monitoring. Without a store, the
labels sent with the images in the window are used.

A hot reload to another model version starts a new window against the new reference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily

from visiondeck.monitor import (
    DriftAssessment,
    DriftThresholds,
    LiveAccuracy,
    MonitorError,
    ReferenceStats,
    SlidingWindow,
    assess,
    live_accuracy,
    load_reference,
)
from visiondeck.monitor.stats import significant
from visiondeck.serve.monitoring.observers import PredictionEvent

__all__ = ["DriftObserver"]

log = logging.getLogger("visiondeck.serve")
_MINUTES = 120  # per-minute volume and confidence kept for the summary's series
_FLUSH_AT = 256  # queued predictions that make `observe` fold them in itself
_VERSIONS = 4  # model versions whose per-minute series are kept (hot reloads add one each)


class _State:
    """Monitoring of one model version."""

    def __init__(self, name: str, version: str, reference: ReferenceStats | None,
                 capacity: int) -> None:
        self.name = name
        self.version = version
        self.reference = reference
        self.window = None if reference is None else SlidingWindow(reference, capacity)
        self.index = {} if reference is None else {c: i for i, c in
                                                   enumerate(reference.classes)}
        self.accuracy: LiveAccuracy | None = None
        self.cached: tuple[tuple[int, int], DriftAssessment] | None = None
        self.accuracy_revision = 0
        self.refreshed_at = 0.0  # time.monotonic() of the last accuracy refresh


class DriftObserver:
    """Implements the observer protocol (observe / metrics / close) for drift monitoring."""

    def __init__(self, engine: Any, *, capacity: int = 1000, store: Any = None,
                 writer: Any = None, thresholds: DriftThresholds | None = None,
                 refresh_s: float = 15.0, accuracy_window: int = 1000) -> None:
        self.engine = engine
        self.capacity = capacity
        self.store = store
        self.writer = writer
        self.thresholds = thresholds or DriftThresholds()
        self.refresh_s = refresh_s
        self.accuracy_window = accuracy_window
        self._state: _State | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: deque[PredictionEvent] = deque()
        self._flush_lock = threading.Lock()
        # per model version: minute → [count, Σ confidence], counted as predictions arrive
        self._minutes: dict[str, OrderedDict[int, list[float]]] = {}
        self.annotated = self.dropped_annotations = 0
        if writer is not None and hasattr(writer, "before_write"):
            writer.before_write(self.flush)

    # ---------------------------------------------------------------- observer protocol

    def observe(self, event: PredictionEvent) -> None:
        """Queue the prediction (on the event loop: an append and a counter).

        The window takes queued predictions in bulk (`flush`): just before the history
        writer writes its next rows (so their embedding projections still reach them), when
        anything reads the window, or once `_FLUSH_AT` predictions wait.
        """
        self._pending.append(event)
        minute = int(event.created_at.timestamp() // 60)
        with self._lock:
            minutes = self._minutes.get(event.model_version)
            if minutes is None:
                minutes = self._minutes[event.model_version] = OrderedDict()
                while len(self._minutes) > _VERSIONS:
                    del self._minutes[next(iter(self._minutes))]
            bucket = minutes.setdefault(minute, [0, 0.0])
            bucket[0] += 1
            bucket[1] += event.confidence
            while len(minutes) > _MINUTES:
                minutes.popitem(last=False)
        if len(self._pending) >= _FLUSH_AT:
            self.flush()
        if self.store is not None and self._thread is None:
            self._start_refresh()

    def flush(self) -> None:
        """Fold the queued predictions into the window of their model version, and attach
        each one's embedding projection to its history row while that is still queued."""
        with self._flush_lock:
            events = []
            while self._pending:
                events.append(self._pending.popleft())
            by_version: dict[str, list[PredictionEvent]] = {}
            for event in events:
                by_version.setdefault(event.model_version, []).append(event)
            for version, group in by_version.items():
                state = self._state_for(version)
                if state is None or state.window is None or state.reference is None:
                    continue
                self._fold(state, group)

    def _fold(self, state: _State, events: list[PredictionEvent]) -> None:
        assert state.window is not None and state.reference is not None
        index = state.index
        predicted = [index.get(e.predicted, -1) for e in events]
        # the unrounded calibrated probability, as the reference measured it
        confidence = [float(e.probabilities[p]) if 0 <= p < len(e.probabilities)
                      else e.confidence for e, p in zip(events, predicted, strict=True)]
        projected = state.window.add_many(
            times=[e.created_at.timestamp() for e in events],
            widths=[e.image.width for e in events], heights=[e.image.height for e in events],
            brightness=[e.image.brightness for e in events],
            contrast=[e.image.contrast for e in events], confidence=confidence,
            predicted=predicted, probabilities=[e.probabilities for e in events],
            embeddings=[e.embedding for e in events], labels=[e.label for e in events])
        if projected is None or self.writer is None:
            return
        z, r = significant(projected[0], 5), significant(projected[1], 5)
        ref = state.reference.id
        for i, event in enumerate(events):
            if not np.isfinite(r[i]):
                continue
            features = {"ref": ref, "z": z[i].tolist(), "r": float(r[i])}
            if self.writer.annotate(event.id, features=features):
                self.annotated += 1
            else:
                self.dropped_annotations += 1

    def metrics(self, registry: Any) -> None:
        registry.register(_DriftCollector(self))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ---------------------------------------------------------------- reading

    def current(self) -> _State | None:
        """The state of the model being served now (None before a model is loaded)."""
        model = getattr(self.engine, "_model", None)
        if model is None:
            return None
        self.flush()
        return self._state_for(model.version)

    def assessment(self, state: _State | None = None) -> DriftAssessment | None:
        """The drift assessment of the current window (cached until it changes)."""
        state = state or self.current()
        if state is None or state.window is None or state.reference is None:
            return None
        key = (state.window.revision, state.accuracy_revision)
        with self._lock:
            if state.cached is not None and state.cached[0] == key:
                return state.cached[1]
        result = assess(state.reference, state.window.snapshot(), self.thresholds,
                        accuracy=state.accuracy)
        with self._lock:
            state.cached = (key, result)
        return result

    def refresh_accuracy(self, state: _State | None = None) -> None:
        """Re-read live accuracy from the labelled rows of the store (blocking: a thread)."""
        state = state or self.current()
        if state is None or state.reference is None or self.store is None:
            return
        pairs = self.store.labelled_pairs(state.version, self.accuracy_window)
        result = live_accuracy(pairs, state.reference.classes, state.reference.accuracy)
        with self._lock:
            state.refreshed_at = time.monotonic()
            if result != state.accuracy:
                state.accuracy = result
                state.accuracy_revision += 1

    def series(self, state: _State) -> list[tuple[datetime, int, float]]:
        """(minute, predictions, mean confidence) of the last two hours with traffic."""
        with self._lock:
            items = list(self._minutes.get(state.version, {}).items())
        return [(datetime.fromtimestamp(m * 60, UTC), int(c), s / c) for m, (c, s) in items if c]

    # ---------------------------------------------------------------- internals

    def _state_for(self, version: str) -> _State | None:
        state = self._state
        if state is not None and state.version == version:
            return state
        model = getattr(self.engine, "_model", None)
        if model is None or model.version != version:
            return None  # a prediction of a model already replaced: not ours to count
        with self._lock:
            if self._state is not None and self._state.version == version:
                return self._state
            try:
                reference = load_reference(model.bundle)
            except MonitorError as exc:
                log.warning("drift monitoring is off for %s %s: %s", model.name, version, exc)
                reference = None
            if reference is not None and tuple(reference.classes) != tuple(model.bundle.classes):
                log.warning("drift monitoring is off: the reference's classes differ from "
                            "the model's")
                reference = None
            self._state = _State(model.name, version, reference, self.capacity)
            if getattr(model, "multilabel", False):
                # the window's tests read a softmax vector and one class per image; a
                # multi-label model is watched per label (`/monitor/summary`'s label rates)
                self._state.window = None
            return self._state

    def _start_refresh(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                            name="visiondeck-drift-accuracy")
            self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh_accuracy()
            except Exception as exc:  # the database may be down: keep the last figure
                log.debug("live accuracy refresh failed: %s", exc)


class _DriftCollector:
    """Exports the current assessment as gauges at each scrape."""

    def __init__(self, observer: DriftObserver) -> None:
        self.observer = observer

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        state = self.observer.current()
        has_reference = state is not None and state.reference is not None
        yield _gauge("visiondeck_monitor_reference",
                     "1 when the served model has reference statistics (drift is watched)",
                     1.0 if has_reference else 0.0)
        result = self.observer.assessment(state) if has_reference else None
        if result is None or state is None or state.reference is None:
            return
        score = GaugeMetricFamily("visiondeck_drift_score", "drift score per feature and "
                                  "test (PSI, KS distance, mean drop)", labels=["feature",
                                                                                "method"])
        threshold = GaugeMetricFamily("visiondeck_drift_threshold", "alarm threshold of "
                                      "each drift score", labels=["feature", "method"])
        alarm = GaugeMetricFamily("visiondeck_drift_feature_alarm", "1 when a feature's "
                                  "score is past its threshold", labels=["feature", "method"])
        for row in result.features:
            labels = [row.feature, row.method]
            score.add_metric(labels, row.score)
            threshold.add_metric(labels, row.threshold if np.isfinite(row.threshold)
                                 else float("nan"))
            alarm.add_metric(labels, 1.0 if row.alarm else 0.0)
        yield from (score, threshold, alarm)
        yield _gauge("visiondeck_drift_alarm", "1 when any drift test (or live accuracy) "
                     "alarms", 1.0 if result.alarm else 0.0)
        yield _gauge("visiondeck_window_size", "predictions in the drift window",
                     result.window_size)
        yield _gauge("visiondeck_window_capacity", "capacity of the drift window",
                     self.observer.capacity)
        acc = result.live_accuracy
        yield _gauge("visiondeck_live_labelled", "labelled predictions behind live accuracy",
                     acc.labelled)
        if acc.accuracy is not None:
            yield _gauge("visiondeck_live_accuracy", "accuracy on labelled live predictions",
                         acc.accuracy)
        if state.reference.accuracy is not None:
            yield _gauge("visiondeck_reference_accuracy", "accuracy on the reference images",
                         state.reference.accuracy)
        mean = GaugeMetricFamily("visiondeck_confidence_mean", "mean calibrated confidence",
                                 labels=["source"])
        mean.add_metric(["reference"], result.confidence_reference_mean or 0.0)
        if result.confidence_live_mean is not None:
            mean.add_metric(["live"], result.confidence_live_mean)
        yield mean
        share = GaugeMetricFamily("visiondeck_class_share", "share of predictions per class",
                                  labels=["cls", "source"])
        for cls, value in result.class_mix_reference.items():
            share.add_metric([cls, "reference"], value)
        for cls, value in result.class_mix_live.items():
            share.add_metric([cls, "live"], value)
        yield share


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
