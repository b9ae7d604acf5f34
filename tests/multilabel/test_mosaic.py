"""The 2×2 Fashion-MNIST mosaic set: each quadrant is one item, and the labels are exactly
the classes of the four items."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from visiondeck.data.builtin import ArrayDataset
from visiondeck.data.mosaic import build_mosaics, write_mosaic_set
from visiondeck.data.sources import open_source


def _coded() -> ArrayDataset:
    """Three 2×2 items whose every pixel is its own index, classes a, b, b."""
    images = np.stack([np.full((2, 2), i, dtype=np.uint8) for i in range(3)])
    return ArrayDataset("coded", images, np.array([0, 1, 1]), ("A", "B"), ("a", "b"))


def test_quadrants_and_labels() -> None:
    mosaics, labels = build_mosaics(_coded(), 20, seed=1)
    assert mosaics.shape == (20, 4, 4)
    for mosaic, label in zip(mosaics, labels, strict=True):
        items = [mosaic[:2, :2], mosaic[:2, 2:], mosaic[2:, :2], mosaic[2:, 2:]]
        assert all(len(np.unique(q)) == 1 for q in items)  # each quadrant is one item
        classes = {"a" if int(q[0, 0]) == 0 else "b" for q in items}
        assert label == "|".join(sorted(classes))
    assert {"a", "b", "a|b"} >= set(labels) and "a|b" in labels
    again, _ = build_mosaics(_coded(), 20, seed=1)
    assert np.array_equal(again, mosaics)


def test_fashion_mnist_mosaics_on_disk(tmp_path: Path) -> None:
    manifest = write_mosaic_set(tmp_path, 12, subset="test", seed=0)
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == 12
    image = np.asarray(Image.open(tmp_path / rows[0]["path"]))
    assert image.shape == (56, 56) and image.dtype == np.uint8
    assert all(1 <= len(r["labels"].split("|")) <= 4 for r in rows)
    source = open_source(manifest)
    assert source.task == "multilabel"
    assert [f.label for f in source.files()] == [r["labels"] for r in rows]
