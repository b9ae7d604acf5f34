"""The multi-label benchmark set: 2×2 mosaics of four random Fashion-MNIST items.

Each 56×56 image tiles four 28×28 items drawn at random (with replacement, so a class can
appear twice); its labels are the set of classes present, one to four of them. Every label
is common and the answer is fully determined by the pixels, so a working multi-label path
must reach a high mAP: it is the bar the multi-label feature is measured against (test
mAP ≥ 0.95 within 10 minutes of training). The set is written as PNGs and a manifest with a
`labels` column, the form a user gives, so the benchmark runs the user's path end to end.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from visiondeck._files import atomic_writer
from visiondeck.data.builtin import ArrayDataset, load_fashion_mnist
from visiondeck.data.multilabel import join_labels

__all__ = ["build_mosaics", "write_mosaic_set"]


def build_mosaics(dataset: ArrayDataset, count: int, *, seed: int = 0
                  ) -> tuple[np.ndarray, list[str]]:
    """`count` mosaics of four items of `dataset` (uint8 (N, H, W) grey items): uint8
    (count, 2H, 2W) images and their label sets ("a|b", class folder names, sorted)."""
    if dataset.images.ndim != 3:
        raise ValueError("mosaics are built from grey (N, H, W) items")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(dataset), size=(count, 4))
    items = dataset.images[picks]  # (count, 4, H, W)
    top = np.concatenate([items[:, 0], items[:, 1]], axis=2)
    bottom = np.concatenate([items[:, 2], items[:, 3]], axis=2)
    mosaics = np.ascontiguousarray(np.concatenate([top, bottom], axis=1))
    names = dataset.folder_names
    labels = [join_labels(names[int(dataset.labels[i])] for i in row) for row in picks]
    return mosaics, labels


def write_mosaic_set(out: str | os.PathLike[str], count: int, *, subset: str = "train",
                     seed: int = 0, root: str | os.PathLike[str] | None = None) -> Path:
    """Write `count` mosaics of Fashion-MNIST `subset` as out/images/*.png and
    out/manifest.csv (path,labels); returns the manifest. `root`: where Fashion-MNIST is
    (default: the usual places, see `builtin.find_fashion_mnist`)."""
    from PIL import Image

    folder = Path(out)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    mosaics, labels = build_mosaics(load_fashion_mnist(subset, root=root),  # type: ignore[arg-type]
                                    count, seed=seed)
    manifest = folder / "manifest.csv"
    with atomic_writer(manifest, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        for i, (image, label) in enumerate(zip(mosaics, labels, strict=True)):
            relpath = f"images/{subset}_{i:06d}.png"
            Image.fromarray(image).save(folder / relpath)
            writer.writerow([relpath, label])
    return manifest
