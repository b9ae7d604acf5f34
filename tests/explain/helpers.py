"""Test helpers shared by the explain and evaluate tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def weights_bundle(run_dir: Path, folder: Path) -> Path:
    """A Bundle folder holding only bundle.json + weights.safetensors of a run (no ONNX):
    what Grad-CAM and compare need from a Bundle."""
    from visiondeck.export.bundle import write_bundle_json

    info = json.loads((run_dir / "model" / "model.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "model" / "weights.safetensors", folder / "weights.safetensors")
    prepare = info["prepare"]
    write_bundle_json(folder, {
        "name": "tiny-bundle", "architecture": info["model"]["name"], "model": info["model"],
        "classes": info["classes"],
        "input": {"image_size": prepare["image_size"], "channels": prepare["channels"],
                  "resize": prepare["resize"], "mean": prepare["mean"], "std": prepare["std"]},
        "calibration": {"temperature": 1.0, "reject": None, "decision_threshold": None},
        "metrics": {}, "source_run": str(run_dir),
    })
    return folder


def run_images(run_dir: Path, label: str, n: int = 4) -> list[Path]:
    """The first `n` image files of one class of the run's data."""
    root = Path(json.loads((run_dir / "run.json").read_text())["split"]["root"])
    return sorted((root / label).glob("*.png"))[:n]


def corner_task(n: int, size: int, seed: int, *, with_object: bool
                ) -> tuple[list[np.ndarray], list[int]]:
    """Noise pictures; with `with_object`, a bright square inside a random quadrant.

    Returns the pictures and each one's quadrant (0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right): where a faithful heat-map of the "object" class must put its mass.
    """
    rng = np.random.default_rng(seed)
    half, side = size // 2, size // 4
    pictures, quadrants = [], []
    for _ in range(n):
        picture = rng.integers(0, 110, (size, size, 3), dtype=np.uint8)
        quadrant = int(rng.integers(0, 4))
        if with_object:
            top = (quadrant // 2) * half + int(rng.integers(0, half - side + 1))
            left = (quadrant % 2) * half + int(rng.integers(0, half - side + 1))
            picture[top:top + side, left:left + side] = rng.integers(170, 256, (1, 1, 3))
        pictures.append(picture)
        quadrants.append(quadrant)
    return pictures, quadrants
