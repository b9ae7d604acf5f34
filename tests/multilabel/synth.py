"""A tiny multi-label image set a small CNN learns in a few steps.

16 px RGB images on a dark noisy background (the noise makes every file distinct, so no
two are duplicates or near-duplicates); each label is a bright square of its own colour in
its own corner, present or not independently of the others. The manifest is written in
either form a user may give: a `labels` column ("red|blue") or one 0/1 column per label.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("blue", "green", "red")
_CORNERS = {"red": (slice(0, 7), slice(0, 7)), "green": (slice(0, 7), slice(9, 16)),
            "blue": (slice(9, 16), slice(0, 7))}
_COLOURS = {"red": (250, 30, 30), "green": (30, 250, 30), "blue": (30, 30, 250)}


def draw(labels: set[str], rng: np.random.Generator, size: int = 16) -> np.ndarray:
    image = rng.integers(0, 70, (size, size, 3), dtype=np.uint8)
    for name in labels:
        rows, cols = _CORNERS[name]
        image[rows, cols] = _COLOURS[name]
    return image


def write_set(root: Path, n: int = 96, *, form: str = "labels", seed: int = 0,
              sets: list[set[str]] | None = None) -> Path:
    """Images under root/images and a manifest root/manifest.csv; returns the manifest.

    form: "labels" (a labels column, "a|b") or "flags" (one 0/1 column per label).
    sets: the label set of each image (default: each label on with probability 1/2)."""
    rng = np.random.default_rng(seed)
    if sets is None:
        sets = [{name for name in LABELS if rng.random() < 0.5} for _ in range(n)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"] if form == "labels" else ["path", *LABELS])
        for i, chosen in enumerate(sets):
            rel = f"images/img_{i:04d}.png"
            Image.fromarray(draw(chosen, rng)).save(root / rel)
            if form == "labels":
                writer.writerow([rel, "|".join(sorted(chosen))])
            else:
                writer.writerow([rel, *(int(name in chosen) for name in LABELS)])
    return manifest
