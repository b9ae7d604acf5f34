"""The live side of the comparison: a sliding window of recent predictions, as arrays.

`WindowData` is what `assess` reads; the service fills it from a `SlidingWindow` (the last
`capacity` predictions, kept in preallocated numpy rings so adding one costs a few
microseconds on the event loop), and `visiondeck monitor report` builds it from stored rows.
Projections of the embedding onto the reference's PCA basis are computed as each prediction
arrives, so the raw embedding (hundreds of floats) is never kept.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visiondeck.monitor.reference import ReferenceStats, image_features

__all__ = ["SCALARS", "SlidingWindow", "WindowData"]

SCALARS = ("brightness", "contrast", "size", "aspect", "confidence")


@dataclass
class WindowData:
    """Per-prediction arrays, oldest first; NaN (or -1 for labels) where a value is missing."""

    times: np.ndarray  # float64 epoch seconds
    features: dict[str, np.ndarray]  # SCALARS → float64 (n,)
    predicted: np.ndarray  # int64 class index (n,)
    probabilities: np.ndarray | None = None  # float64 (n, K)
    projections: np.ndarray | None = None  # float64 (n, k)
    residuals: np.ndarray | None = None  # float64 (n,)
    labels: np.ndarray | None = None  # int64 true class index, -1 when unlabelled

    def __len__(self) -> int:
        return int(self.predicted.shape[0])

    @classmethod
    def empty(cls) -> WindowData:
        return cls(np.empty(0), {name: np.empty(0) for name in SCALARS},
                   np.empty(0, dtype=np.int64))

    @classmethod
    def from_rows(cls, reference: ReferenceStats, *, times: Sequence[float],
                  widths: Sequence[float], heights: Sequence[float],
                  brightness: Sequence[float | None], contrast: Sequence[float | None],
                  confidence: Sequence[float], predicted: Sequence[str],
                  labels: Sequence[str | None] | None = None,
                  projections: Sequence[Sequence[float] | None] | None = None,
                  residuals: Sequence[float | None] | None = None) -> WindowData:
        """From stored predictions (class names; None for statistics a row lacks)."""
        index = {c: i for i, c in enumerate(reference.classes)}

        def floats(values: Sequence[Any]) -> np.ndarray:
            return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)

        features = image_features(floats(widths), floats(heights), floats(brightness),
                                  floats(contrast))
        features["confidence"] = floats(confidence)
        k = 0 if reference.embedding is None else reference.embedding.components.shape[0]
        z = r = None
        if projections is not None and k:
            z = np.full((len(projections), k), np.nan)
            for i, row in enumerate(projections):
                if row is not None and len(row) == k:
                    z[i] = row
            r = floats(residuals if residuals is not None else [None] * len(projections))
        return cls(
            times=floats(times), features=features,
            predicted=np.asarray([index.get(p, -1) for p in predicted], dtype=np.int64),
            projections=z, residuals=r,
            labels=None if labels is None else np.asarray(
                [-1 if lab is None else index.get(lab, -2) for lab in labels], dtype=np.int64))


class SlidingWindow:
    """The last `capacity` predictions against one reference; thread-safe."""

    def __init__(self, reference: ReferenceStats, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError("the window needs a capacity of at least 1")
        self.reference = reference
        self.capacity = capacity
        k = len(reference.classes)
        e = reference.embedding
        self._times = np.zeros(capacity)
        self._scalars = np.zeros((capacity, len(SCALARS)))
        self._predicted = np.zeros(capacity, dtype=np.int64)
        self._labels = np.full(capacity, -1, dtype=np.int64)
        self._probabilities = np.zeros((capacity, k)) if reference.probabilities else None
        self._projections = None if e is None else np.full((capacity, len(e.projections)),
                                                           np.nan)
        self._residuals = None if e is None else np.full(capacity, np.nan)
        self._index = {c: i for i, c in enumerate(reference.classes)}
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()
        self.revision = 0  # changes with every add: lets readers cache an assessment

    def __len__(self) -> int:
        return self._count

    @property
    def since(self) -> float | None:
        """Epoch seconds of the oldest prediction in the window."""
        with self._lock:
            if not self._count:
                return None
            return float(self._times[(self._next - self._count) % self.capacity])

    def add(self, *, time: float, width: int, height: int, brightness: float, contrast: float,
            confidence: float, predicted: int, probabilities: np.ndarray | None = None,
            embedding: np.ndarray | None = None, label: str | None = None
            ) -> tuple[np.ndarray, float] | None:
        """Append one prediction; returns its (projection, residual) when it has an embedding."""
        projected = self.add_many(
            times=[time], widths=[width], heights=[height], brightness=[brightness],
            contrast=[contrast], confidence=[confidence], predicted=[predicted],
            probabilities=[probabilities], embeddings=[embedding], labels=[label])
        return None if projected is None or not np.isfinite(projected[1][0]) else (
            projected[0][0], float(projected[1][0]))

    def add_many(self, *, times: Sequence[float], widths: Sequence[float],
                 heights: Sequence[float], brightness: Sequence[float],
                 contrast: Sequence[float], confidence: Sequence[float],
                 predicted: Sequence[int],
                 probabilities: Sequence[np.ndarray | None] | None = None,
                 embeddings: Sequence[np.ndarray | None] | None = None,
                 labels: Sequence[str | None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        """Append predictions in one go, oldest first: the whole batch's features and
        embedding projections are a handful of array operations, where one `add` per
        prediction would pay numpy's per-call overhead for each of them.

        Returns the (n, k) projections and (n,) residuals (NaN rows for predictions without
        an embedding), or None when the reference has no embedding summary.
        """
        n = len(times)
        if n == 0:
            return None
        f = image_features(widths, heights, brightness, contrast)
        rows = np.column_stack([f["brightness"], f["contrast"], f["size"], f["aspect"],
                                np.asarray(confidence, dtype=np.float64)])
        e = self.reference.embedding
        z = r = None
        if e is not None:
            z = np.full((n, len(e.projections)), np.nan)
            r = np.full(n, np.nan)
            usable = [i for i, v in enumerate(embeddings or ()) if v is not None
                      and np.size(v) == e.dim]
            if usable:
                z[usable], r[usable] = e.project(np.stack([embeddings[i] for i in usable]))
        k = None if self._probabilities is None else self._probabilities.shape[1]
        probs = None
        if k is not None:
            probs = np.full((n, k), np.nan)
            for i, v in enumerate(probabilities or ()):
                if v is not None and np.size(v) == k:
                    probs[i] = v
        label_index = np.asarray([-1 if lab is None else self._index.get(lab, -2)
                                  for lab in (labels or [None] * n)], dtype=np.int64)
        # a batch longer than the window keeps its newest `capacity` rows
        keep = slice(max(0, n - self.capacity), n)
        with self._lock:
            slots = (self._next + np.arange(n)[keep] - keep.start) % self.capacity
            self._times[slots] = np.asarray(times, dtype=np.float64)[keep]
            self._scalars[slots] = rows[keep]
            self._predicted[slots] = np.asarray(predicted, dtype=np.int64)[keep]
            self._labels[slots] = label_index[keep]
            if probs is not None and self._probabilities is not None:
                self._probabilities[slots] = probs[keep]
            if z is not None and r is not None and self._projections is not None \
                    and self._residuals is not None:
                self._projections[slots] = z[keep]
                self._residuals[slots] = r[keep]
            kept = keep.stop - keep.start
            self._next = (self._next + kept) % self.capacity
            self._count = min(self.capacity, self._count + kept)
            self.revision += 1
        return None if z is None or r is None else (z, r)

    def snapshot(self) -> WindowData:
        """A copy of the window's contents, oldest first."""
        with self._lock:
            n = self._count
            order = (np.arange(self._next - n, self._next)) % self.capacity

            def take(array: np.ndarray | None) -> np.ndarray | None:
                return None if array is None else array[order].copy()

            scalars = self._scalars[order]
            return WindowData(
                times=self._times[order].copy(),
                features={name: scalars[:, j].copy() for j, name in enumerate(SCALARS)},
                predicted=self._predicted[order].copy(), probabilities=take(self._probabilities),
                projections=take(self._projections), residuals=take(self._residuals),
                labels=self._labels[order].copy())
