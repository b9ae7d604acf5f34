"""Write a built-in data set as PNG files in class folders: the layout VisionDeck reads.

Users learn the expected layout by looking at one, and every stage after the data layer
(check, split, train) can then treat built-in sets exactly like their own folders. Writing is
idempotent: identical files are skipped, edited files are never silently replaced.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from visiondeck.data.builtin import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    FASHION_MNIST_FOLDERS,
    ArrayDataset,
    _builtin_key,
    _sample_dir,
    load_fashion_mnist,
    load_sample,
)
from visiondeck.errors import DataError

__all__ = ["MaterializeResult", "materialize"]

_PNG_LEVEL = 6  # measured: levels 1-9 cost the same on 28×28 images; 6 is ~4% smaller than 1


@dataclass(frozen=True)
class MaterializeResult:
    """What `materialize` did; `counts` covers every requested image, written or skipped."""

    out_dir: Path
    counts: dict[str, dict[str, int]]  # subset ("sample" for the sample) -> folder -> n
    files_written: int
    skipped_existing: int



def _encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


def _png_matches(path: str, image: np.ndarray) -> bool:
    try:
        with Image.open(path, formats=("PNG",)) as im:  # only ever our own PNGs
            return im.mode == ("L" if image.ndim == 2 else "RGB") and np.array_equal(
                np.asarray(im), image
            )
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


@dataclass
class _ChunkResult:
    written: int = 0
    skipped: int = 0
    conflicts: list[str] = field(default_factory=list)
    error: str | None = None


def _write_chunk(task: tuple[str, list[str], np.ndarray, bool]) -> _ChunkResult:
    """Write one chunk of PNGs (runs in a worker process; top-level so it pickles)."""
    out_dir, rels, images, overwrite = task
    result = _ChunkResult()
    suffix = f".{os.getpid()}.tmp"
    for rel, image in zip(rels, images, strict=True):
        # Plain os.path strings: pathlib's overhead is measurable at 70,000 files.
        path = os.path.join(out_dir, rel)
        head, tail = os.path.split(path)
        tmp = os.path.join(head, f".{tail}{suffix}")
        try:
            if not overwrite and os.path.exists(path):
                if _png_matches(path, image):
                    result.skipped += 1
                else:
                    result.conflicts.append(rel)
                continue
            with open(tmp, "wb") as fh:
                fh.write(_encode_png(image))
            os.replace(tmp, path)
            result.written += 1
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            result.error = f"Cannot write {path}: {exc}"
            break
    return result


def _write_text(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _readme(name: str, subsets: Sequence[str]) -> str:
    if name == "cifar10":
        return (
            "CIFAR-10, written by VisionDeck as PNG files from the official binary version.\n\n"
            "Layout:\n" + "".join(f"  {s}/<class>/{s}_NNNNN.png   NNNNN: position in the "
                                  f"official {s} batches\n" for s in subsets)
            + "\nCIFAR-10 is by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton,\n"
            "https://www.cs.toronto.edu/~kriz/cifar.html (cite: Learning Multiple Layers of\n"
            "Features from Tiny Images, 2009).\n"
        )
    layout = "".join(
        "  <class>/sample_NNNNN.png   NNNNN: position in the VisionDeck sample\n"
        if s == "sample"
        else f"  {s}/<class>/{s}_NNNNN.png   NNNNN: position in the official {s} file\n"
        for s in subsets
    )
    pairs = zip(FASHION_MNIST_FOLDERS, FASHION_MNIST_CLASSES, strict=True)
    return (
        f"Fashion-MNIST ({name}), written by VisionDeck as PNG files.\n\nLayout:\n{layout}\n"
        "Every folder holding <class> sub-folders is a class-folder data set VisionDeck can\n"
        "read as is. classes.json lists the class folder names sorted: that is the order in\n"
        "which VisionDeck numbers the classes of a folder data set.\n\nClass folders:\n"
        + "".join(f"  {folder:<11} {label}\n" for folder, label in pairs)
        + "\nFashion-MNIST is by Zalando Research, https://github.com/zalandoresearch/"
        "fashion-mnist,\nand is distributed under the MIT licence:\n\n"
        + _sample_dir().joinpath("LICENSE").read_text(encoding="utf-8")
    )


def _plan(
    parts: list[tuple[str, ArrayDataset]], out: Path, limit: int | None
) -> tuple[list[str], np.ndarray, dict[str, dict[str, int]]]:
    """Relative PNG paths, their images and per-class counts; creates the folders."""
    rels: list[str] = []
    images: list[np.ndarray] = []
    counts: dict[str, dict[str, int]] = {}
    for subset, ds in parts:
        idx = np.arange(len(ds))
        if limit is not None:  # the first `limit` of each class, kept in file order
            firsts = [np.flatnonzero(ds.labels == c)[:limit] for c in range(len(ds.classes))]
            idx = np.sort(np.concatenate(firsts))
        n = np.bincount(ds.labels[idx], minlength=len(ds.classes))
        counts[subset] = {f: int(n[ds.folder_names.index(f)]) for f in sorted(ds.folder_names)}
        lead = "" if subset == "sample" else f"{subset}/"
        for folder in ds.folder_names:
            (out / lead / folder).mkdir(parents=True, exist_ok=True)
        rels += [f"{lead}{ds.folder_names[ds.labels[i]]}/{subset}_{i:05d}.png" for i in idx]
        images.append(ds.images[idx])
    return rels, np.concatenate(images), counts


def materialize(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    subsets: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    limit_per_class: int | None = None,
    workers: int | None = None,
) -> MaterializeResult:
    """Write a built-in set as PNGs in the class-folder layout VisionDeck reads.

    Re-runs are idempotent: files already holding the same pixels are skipped; files that
    differ raise `DataError` unless `overwrite` (which rewrites everything), so nothing a
    user edited is clobbered silently. `limit_per_class` keeps the first n images of each
    class in file order. `workers` defaults to os.cpu_count() processes; 1 writes in this
    process.
    """
    key = _builtin_key(name)
    if limit_per_class is not None and limit_per_class < 1:
        raise DataError("limit_per_class must be at least 1.")
    if key == "sample":
        if subsets:
            raise DataError("The sample has no subsets.", hint="Omit subsets for the sample.")
        parts = [("sample", load_sample())]
    elif key == "cifar10":
        from visiondeck.data.cifar import load_cifar10

        wanted = dict.fromkeys(subsets if subsets is not None else ("train", "test"))
        parts = [(s, load_cifar10(s, root=root)) for s in wanted]  # type: ignore[arg-type]
    else:
        wanted = dict.fromkeys(subsets if subsets is not None else FASHION_MNIST_FILES)
        parts = [(s, load_fashion_mnist(s, root=root, download=download)) for s in wanted]  # type: ignore[arg-type]
    out = Path(out_dir).expanduser()
    rels, images, counts = _plan(parts, out, limit_per_class)
    n_workers = max(1, workers or os.cpu_count() or 1)
    size = max(200, min(2000, math.ceil(len(rels) / (n_workers * 8))))
    tasks = [
        (str(out), rels[i : i + size], images[i : i + size], overwrite)
        for i in range(0, len(rels), size)
    ]
    written = skipped = 0
    conflicts: list[str] = []
    # Fork the pool before rich starts its refresh thread: forking a threaded process can
    # deadlock on a lock the other thread holds.
    n_workers = min(n_workers, len(tasks))
    pool = multiprocessing.Pool(n_workers) if n_workers > 1 else None
    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
            task_id = bar.add_task(f"Writing {key} PNGs", total=len(rels))
            results = pool.imap_unordered(_write_chunk, tasks) if pool else map(_write_chunk, tasks)
            for res in results:
                if res.error:
                    raise DataError(res.error, hint="Check free space and permissions.")
                written, skipped = written + res.written, skipped + res.skipped
                conflicts += res.conflicts
                bar.advance(task_id, res.written + res.skipped + len(res.conflicts))
    finally:
        if pool is not None:
            pool.terminate()
    if conflicts:
        raise DataError(
            f"{len(conflicts)} existing file(s) in {out} differ from {key}, e.g. "
            + ", ".join(sorted(conflicts)[:3]),
            hint="Re-run with overwrite=True (--overwrite) to replace them, or write elsewhere.",
        )
    folders = parts[0][1].folder_names
    _write_text(out / "classes.json", json.dumps(sorted(folders), indent=2) + "\n")
    _write_text(out / "README.txt", _readme(key, [subset for subset, _ in parts]))
    return MaterializeResult(out, counts, files_written=written, skipped_existing=skipped)
