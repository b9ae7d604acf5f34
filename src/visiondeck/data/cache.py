"""Decode a split once into a compact uint8 array, so epochs cost no decoding at all.

Small-image data sets (Fashion-MNIST, CIFAR-sized photos, thumbnails) spend most of their
training time decoding PNGs and resizing them, again every epoch. Decoding each file once,
with the same decoder and resize serving uses, into a (N, C, H, W) uint8 array makes an epoch
a memory copy. The array is saved next to the split (keyed by the split id and the
preparation spec), so the next run with the same data starts at once.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visiondeck._files import atomic_write_json, atomic_writer
from visiondeck.data.catalog import default_workers
from visiondeck.data.multilabel import label_matrix
from visiondeck.data.split import SplitRecord
from visiondeck.imaging import DecodeLimits, ImageDecodeError, decode_image, resize_image

__all__ = ["DecodedArrays", "cache_bytes", "decode_records"]


@dataclass(frozen=True)
class DecodedArrays:
    images: np.ndarray  # uint8 (N, C, H, W) of the files that decoded
    labels: np.ndarray  # int64 (N,); multi-label: uint8 (N, K) 0/1
    relpaths: list[str]
    failed: list[str]  # files that could not be decoded (left out, counted)


def cache_bytes(n_files: int, channels: int, image_size: int) -> int:
    return n_files * channels * image_size * image_size


def decode_records(
    root: Path,
    records: Sequence[SplitRecord],
    classes: Sequence[str],
    *,
    image_size: int,
    channels: int,
    resize: str,
    limits: DecodeLimits,
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = False,
    multilabel: bool = False,
) -> DecodedArrays:
    """Decode and resize every record (in parallel), reusing a saved array when present.

    `multilabel`: record labels are label sets ("a|b") and `labels` a (N, K) 0/1 matrix."""
    key = _key(records, image_size, channels, resize, limits,
               "|multilabel|" + "\0".join(classes) if multilabel else "")
    if cache_dir is not None:
        cached = _load(cache_dir, key)
        if cached is not None:
            return cached
    index = {c: i for i, c in enumerate(classes)}
    jobs = [(str(root / r.relpath), image_size, channels, resize, limits) for r in records]
    images = np.empty((len(jobs), channels, image_size, image_size), dtype=np.uint8)
    ok = np.zeros(len(jobs), dtype=bool)
    for i, array in enumerate(_track(_decode_all(jobs, workers), len(jobs), progress)):
        if array is not None:
            images[i] = array
            ok[i] = True
    kept = [r.label for r, good in zip(records, ok, strict=True) if good]
    result = DecodedArrays(
        images[ok] if not ok.all() else images,
        label_matrix(kept, classes) if multilabel
        else np.array([index[label] for label in kept], dtype=np.int64),
        [r.relpath for r, good in zip(records, ok, strict=True) if good],
        [r.relpath for r, good in zip(records, ok, strict=True) if not good],
    )
    if cache_dir is not None:
        _save(cache_dir, key, result)
    return result


def _decode_one(job: tuple[str, int, int, str, DecodeLimits]) -> np.ndarray | None:
    path, size, channels, resize, limits = job
    try:
        decoded = decode_image(path, mode="L" if channels == 1 else "RGB", limits=limits)
    except (ImageDecodeError, OSError):
        return None
    return resize_image(decoded.array, size, resize).transpose(2, 0, 1)


def _decode_all(jobs: list, workers: int | None) -> Iterator[np.ndarray | None]:
    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(jobs) < 256:
        yield from map(_decode_one, jobs)
        return
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_decode_one, jobs, chunksize=256)


def _key(records: Sequence[SplitRecord], size: int, channels: int, resize: str,
         limits: DecodeLimits, kind: str = "") -> str:
    digest = hashlib.sha256(f"{size}|{channels}|{resize}|{limits}{kind}".encode())
    for r in records:
        digest.update(f"{r.relpath}\0{r.sha256}\0{r.label}\n".encode())
    return digest.hexdigest()[:20]


def _load(folder: Path, key: str) -> DecodedArrays | None:
    meta_path = folder / f"decoded-{key}.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(folder / f"decoded-{key}.npy")
        labels = np.load(folder / f"decoded-{key}-labels.npy")
    except (OSError, ValueError):
        return None
    return DecodedArrays(images, labels, meta["relpaths"], meta["failed"])


def _save(folder: Path, key: str, result: DecodedArrays) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, array in (("", result.images), ("-labels", result.labels)):
        # a file object: np.save would append ".npy" to a name
        with atomic_writer(folder / f"decoded-{key}{suffix}.npy", binary=True) as handle:
            np.save(handle, array)
    meta = {"relpaths": result.relpaths, "failed": result.failed}
    atomic_write_json(folder / f"decoded-{key}.json", meta, indent=None)


def _track(items: Iterator, total: int, progress: bool) -> Iterator:
    if not progress:
        yield from items
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("decoding into memory", total=total)
        for item in items:
            bar.advance(task)
            yield item
