"""A tiny audit on solid colours: three classes a model separates at once, two labels flipped
on purpose and one checkerboard that looks like no class, trained once per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.factories import png_bytes

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
PER_CLASS = 12
#: relpath (in the folder of its *given* label) → the colour it really shows
FLIPPED = {"green/red_flipped.png": "red", "red/blue_flipped.png": "blue"}
CHECKER = "blue/checkerboard.png"
FOLDS = 2


def colour_image(rgb: tuple[int, int, int], seed: int, size: int = 20) -> np.ndarray:
    """A solid colour with a little per-pixel noise: every file (and perceptual hash) differs."""
    noise = np.random.default_rng(seed).integers(-6, 7, (size, size, 3))
    return np.clip(np.asarray(rgb) + noise, 0, 255).astype(np.uint8)


def write_colours(root: Path) -> Path:
    seed = 0
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            (root / name / f"{name}_{i:03d}.png").write_bytes(png_bytes(colour_image(rgb, seed)))
            seed += 1
    for relpath, shows in FLIPPED.items():
        (root / relpath).write_bytes(png_bytes(colour_image(COLOURS[shows], seed)))
        seed += 1
    board = (np.indices((20, 20)).sum(axis=0) // 2 % 2 * 255).astype(np.uint8)
    (root / CHECKER).write_bytes(png_bytes(np.dstack([board] * 3)))
    return root


def colour_recipe(source: Path, name: str = "colours"):
    from visiondeck.config import load_recipe

    return load_recipe(
        None,
        [
            f"name={name}",
            f"data.source={source}",
            "data.image_size=16",
            "data.channels=3",
            "data.augment=none",
            "data.mean=[0.5]",
            "data.std=[0.5]",
            "data.num_workers=0",
            "model.name=simple_cnn",
            "model.dropout=0.0",
            "train.epochs=6",
            "train.batch_size=8",
            "train.lr=0.01",
            "train.scheduler=none",
            "train.accelerator=cpu",
            "train.seed=0",
            "tracking.enabled=false",
        ],
    )


@dataclass
class Audited:
    data: Path
    out: Path
    result: object  # visiondeck.audit.AuditResult
    recipe: object


@pytest.fixture(scope="session")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Audited:
    """One real audit (2 folds, real training) shared by the tests that only read it."""
    from visiondeck.audit import audit

    base = tmp_path_factory.mktemp("audit")
    data = write_colours(base / "colours")
    recipe = colour_recipe(data)
    result = audit(recipe, base / "out", folds=FOLDS)
    return Audited(data, base / "out", result, recipe)
