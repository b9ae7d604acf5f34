"""Real images of a run's split, prepared exactly as a Bundle prepares them, in batches.

Parity, INT8 calibration, accuracy and pruning all need "N images of subset S as a float
batch". They read them through `Bundle.prepare`-equivalent code (the numpy path serving
runs), never through the training dataset's torch transforms, so the figures stored in
bundle.json describe what a consumer of the Bundle will see. Bad files are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visiondeck.data.transforms import normalize
from visiondeck.export.bundle import InputSpec
from visiondeck.imaging import ImageDecodeError, decode_image, resize_image

__all__ = ["LabelledBatch", "iter_batches", "load_samples", "pick_records"]


@dataclass(frozen=True)
class LabelledBatch:
    images: np.ndarray  # float32 (N, C, H, W)
    labels: np.ndarray  # int64 (N,); multi-label: uint8 (N, K) 0/1


def pick_records(records: Sequence, limit: int | None, seed: int = 0) -> list:
    """Up to `limit` records, drawn evenly across the list with a fixed seed (all if None)."""
    records = list(records)
    if limit is None or len(records) <= limit:
        return records
    order = np.random.default_rng(seed).permutation(len(records))[:limit]
    return [records[i] for i in sorted(order)]


def iter_batches(root: str | Path, records: Sequence, classes: Sequence[str], spec: InputSpec,
                 *, batch_size: int = 64, multilabel: bool = False) -> Iterator[LabelledBatch]:
    """Prepared (images, labels) batches of split records; unreadable files are skipped.
    `multilabel`: record labels are label sets and `labels` a (N, K) 0/1 matrix."""
    index = {c: i for i, c in enumerate(classes)}
    if multilabel:
        yield from _multilabel_batches(root, records, classes, spec, batch_size)
        return
    root = Path(root)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for record in records:
        try:
            decoded = decode_image(root / record.relpath, mode=spec.mode,  # type: ignore[arg-type]
                                   limits=spec.limits)
        except (ImageDecodeError, OSError):
            continue
        array = resize_image(decoded.array, spec.image_size, spec.resize)  # type: ignore[arg-type]
        images.append(normalize(array, spec.mean, spec.std))
        labels.append(index[record.label])
        if len(images) == batch_size:
            yield LabelledBatch(np.stack(images), np.asarray(labels, dtype=np.int64))
            images, labels = [], []
    if images:
        yield LabelledBatch(np.stack(images), np.asarray(labels, dtype=np.int64))


def _multilabel_batches(root: str | Path, records: Sequence, classes: Sequence[str],
                        spec: InputSpec, batch_size: int) -> Iterator[LabelledBatch]:
    from visiondeck.data.multilabel import label_matrix

    for start in range(0, len(records), batch_size):
        chunk = list(records[start:start + batch_size])
        names = [f"#{i}" for i in range(len(chunk))]  # keep the rows that decode
        labels = {name: r.label for name, r in zip(names, chunk, strict=True)}
        kept = [LabelledBatch(b.images, b.labels) for b in iter_batches(
            root, [_Indexed(r.relpath, n) for r, n in zip(chunk, names, strict=True)], names,
            spec, batch_size=batch_size)]
        for batch in kept:
            rows = [labels[names[i]] for i in batch.labels]
            yield LabelledBatch(batch.images, label_matrix(rows, classes))


@dataclass(frozen=True)
class _Indexed:
    """A record whose label is its position in a chunk (to follow it through decoding)."""

    relpath: str
    label: str


def load_samples(root: str | Path, records: Sequence, classes: Sequence[str], spec: InputSpec,
                 *, limit: int | None = None, seed: int = 0,
                 multilabel: bool = False) -> LabelledBatch:
    """One batch of up to `limit` prepared images (for parity checks and calibration)."""
    batches = list(iter_batches(root, pick_records(records, limit, seed), classes, spec,
                                batch_size=max(1, limit or 256), multilabel=multilabel))
    if not batches:
        c, h, w = spec.shape
        return LabelledBatch(np.empty((0, c, h, w), np.float32), np.empty(0, np.int64))
    return LabelledBatch(np.concatenate([b.images for b in batches]),
                         np.concatenate([b.labels for b in batches]))
