"""A tiny learnable image set and a recipe that trains on it in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiondeck.config import Recipe, load_recipe


def write_learnable(root: Path, per_class: int = 24, size: int = 16, seed: int = 0) -> Path:
    """Three classes a small CNN can tell apart: the bright quadrant differs per class."""
    rng = np.random.default_rng(seed)
    corners = {"left": (slice(0, size // 2), slice(0, size // 2)),
               "middle": (slice(size // 4, 3 * size // 4), slice(size // 4, 3 * size // 4)),
               "right": (slice(size // 2, size), slice(size // 2, size))}
    for label, (rows, cols) in corners.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            image[rows, cols] = rng.integers(170, 256, (1, 1, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / label / f"{label}_{i:03d}.png")
    return root


@pytest.fixture
def tiny_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Factory: a recipe over a fresh tiny folder, run from tmp_path (prepared/ lands there)."""
    monkeypatch.chdir(tmp_path)
    data = write_learnable(tmp_path / "images")

    def make(*overrides: str) -> Recipe:
        base = [
            f"data.source={data}", "data.image_size=16", "data.channels=3",
            "data.augment=none", "data.cache=memory", "data.num_workers=1",
            "data.val_fraction=0.25", "data.test_fraction=0.25",
            "model.name=simple_cnn", "train.epochs=2", "train.batch_size=16", "train.lr=0.01",
            f"output_dir={tmp_path / 'runs'}", "name=tiny",
        ]
        return load_recipe(None, [*base, *overrides])

    return make
