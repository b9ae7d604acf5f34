"""A small multi-label run on the synthetic corners (`synth.py`), shared by the phase-2
tests (cross-validation, gates, calibration): a few epochs of a tiny CNN at 16 px."""

from __future__ import annotations

from pathlib import Path

from tests.multilabel.synth import write_set
from visiondeck.config import Recipe, load_recipe


def recipe(tmp: Path, manifest: Path, *extra: str) -> Recipe:
    """A fast recipe for `manifest` writing under `tmp` (no tracking)."""
    return load_recipe(None, [
        f"data.source={manifest}", f"data.prepared={tmp}/prep", "data.image_size=16",
        "data.augment=none", "data.num_workers=1", "train.epochs=5", "train.batch_size=16",
        "train.lr=0.01", f"output_dir={tmp}/runs", "name=ml", "tracking.enabled=false",
        *extra])


def train_run(tmp: Path, n: int = 120, *extra: str, seed: int = 0) -> Path:
    """Train on a fresh synthetic set of `n` images; returns the run folder."""
    from visiondeck.train.runner import train

    manifest = write_set(tmp / "data", n, form="labels", seed=seed)
    return train(recipe(tmp, manifest, *extra), progress=False).run_dir
