"""Shared fixtures: tiny generated image folders, good and bad, built fresh per test."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.factories import crafted_png, pattern, png_bytes, write_class_folder, write_learnable

# Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when `ray` is first imported (a
# module-level constant). The loopback test cluster (tests/scale/conftest.py) needs it "0"
# (single-machine mode: 127.0.0.1 stays loopback); set here, before any test can import
# ray in this process, or a test that imports it first (the Ray engine's scorer, run
# without a cluster) leaves the driver dialling the host's address: "Timed out while
# waiting for GCS to become available".
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """Two classes of good images plus one file of every bad and unusual kind."""
    root = tmp_path / "images"
    write_class_folder(root, {"cat": 12, "dog": 12})
    good = (root / "cat" / "cat_000.png").read_bytes()
    noise = np.random.default_rng(99).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = png_bytes(noise)

    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "notes.txt").write_text("these are my notes, not a picture\n")
    (root / "cat" / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (root / "dog" / "print.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n")
    (root / "cat" / "cut.png").write_bytes(full[: len(full) // 2])
    garbage = np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8).tobytes()
    (root / "dog" / "garbled.png").write_bytes(crafted_png(32, 32, b"\x00\x00" + garbage))
    (root / "dog" / "tiny.png").write_bytes(png_bytes(pattern(500, 4)))
    (root / "cat" / "bomb.png").write_bytes(crafted_png(100_000, 100_000, zlib.compress(b"")))
    (root / "cat" / "copy_of_cat_000.png").write_bytes(good)
    conflict = png_bytes(pattern(777))
    (root / "dog" / "conflict.png").write_bytes(conflict)
    (root / "cat" / "conflict.png").write_bytes(conflict)

    picture = pattern(1234, 48)
    Image.fromarray(picture).convert("CMYK").save(root / "cat" / "cmyk.jpg", quality=95)
    gray16 = (np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16)
    Image.fromarray(gray16).save(root / "dog" / "gray16.png")
    Image.fromarray(pattern(1235, 48)).quantize(16).save(root / "dog" / "palette.png")
    rgba = np.dstack([pattern(1236, 48), np.full((48, 48), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "cat" / "alpha.png")
    rotated = Image.fromarray(pattern(1237, 48)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(root / "dog" / "rotated.jpg", exif=exif, quality=95)

    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "README.txt").write_text("text beside the classes is fine")
    (root / "stray.png").write_bytes(png_bytes(pattern(4242)))  # an image with no class
    return root


@pytest.fixture
def clean_folder(tmp_path: Path) -> Path:
    root = tmp_path / "clean"
    write_class_folder(root, {"ant": 20, "bee": 20, "wasp": 20})
    return root


def _tiny_overrides(data: Path, runs: Path, name: str) -> list[str]:
    return [
        f"data.source={data}", "data.image_size=16", "data.channels=3",
        "data.augment=none", "data.cache=memory", "data.num_workers=1",
        "data.val_fraction=0.25", "data.test_fraction=0.25",
        "model.name=simple_cnn", "train.epochs=2", "train.batch_size=16", "train.lr=0.01",
        f"output_dir={runs}", f"name={name}",
    ]


@pytest.fixture
def tiny_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """Factory: a recipe over a fresh tiny folder, run from tmp_path (prepared/ lands there)."""
    from visiondeck.config import load_recipe

    monkeypatch.chdir(tmp_path)
    data = write_learnable(tmp_path / "images")

    def make(*overrides: str):
        return load_recipe(None, [*_tiny_overrides(data, tmp_path / "runs", "tiny"), *overrides])

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One finished tiny run (3 classes, 16 px, simple_cnn, 4 epochs), shared read-only.

    Tests that consume a run (evaluate, export, serve...) use this instead of training their
    own; copy it first if a test must change it.
    """
    from visiondeck.config import load_recipe
    from visiondeck.train.runner import train

    base = tmp_path_factory.mktemp("trained")
    data = write_learnable(base / "images", per_class=32)
    recipe = load_recipe(None, [*_tiny_overrides(data, base / "runs", "shared"),
                                "train.epochs=4"])
    before = Path.cwd()
    os.chdir(base)
    try:
        result = train(recipe, progress=False)
    finally:
        os.chdir(before)
    yield result.run_dir
