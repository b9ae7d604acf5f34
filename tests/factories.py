"""Tiny generated images for the tests (good ones, bad ones, folders of both), and the few
helpers several test modules share."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(seed: int, size: int = 32) -> np.ndarray:
    """A distinct smooth RGB picture per seed (random 6×6 field, bilinearly upsampled), so
    perceptual hashes of different seeds differ while the picture survives re-encoding."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(field).resize((size, size), Image.Resampling.BILINEAR))


def png_bytes(array: np.ndarray, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_png(width: int, height: int, idat: bytes) -> bytes:
    """A PNG with an honest header and CRCs around arbitrary IDAT bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def write_class_folder(root: Path, per_class: dict[str, int], *, size: int = 32,
                       start_seed: int = 0) -> list[Path]:
    paths = []
    seed = start_seed
    for label, count in per_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = root / label / f"{label}_{i:03d}.png"
            path.write_bytes(png_bytes(pattern(seed, size)))
            paths.append(path)
            seed += 1
    return paths


# Every kind of problem `data check` must name, and where the messy fixture puts it.
EXPECTED_STATUS = {
    "cat/empty.png": "zero_bytes",
    "cat/notes.txt": "not_an_image",
    "cat/vector.svg": "unsupported_format",
    "dog/print.eps": "unsupported_format",
    "cat/cut.png": "truncated",
    "dog/garbled.png": "corrupt",
    "dog/tiny.png": "too_small",
    "cat/bomb.png": "bomb",
    "cat/copy_of_cat_000.png": "duplicate",
    "dog/conflict.png": "label_conflict",
    "cat/conflict.png": "label_conflict",
}
# Unusual but valid: normalised on load, never rejected (with the note the decoder records).
EXPECTED_NORMALISED = {
    "cat/cmyk.jpg": "cmyk",
    "dog/gray16.png": "16bit",
    "dog/palette.png": "palette",
    "cat/alpha.png": "alpha",
    "dog/rotated.jpg": "exif_rotated",
}


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


def crash_at_epoch(epoch: int):
    """A Lightning callback that kills training as epoch `epoch` starts, i.e. right after
    `epoch` epochs were checkpointed: what a killed process leaves behind, for resume tests.
    """
    import lightning as L

    class _Crash(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            if trainer.current_epoch == epoch:
                raise RuntimeError("simulated crash")

    return _Crash()


def loaded_after_import(imports: Sequence[str], watched: Sequence[str]) -> list[str]:
    """Which of `watched` (modules or packages, by name) a fresh interpreter has loaded once
    it imported `imports`: how the tests prove a light module stays light."""
    code = ("import importlib, json, sys\n"
            f"for name in {list(imports)!r}: importlib.import_module(name)\n"
            f"watched = {list(watched)!r}\n"
            "print(json.dumps(sorted({w for w in watched for m in list(sys.modules) "
            "if m == w or m.startswith(w + '.')})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tiny_overrides(data: Path, *extra: str) -> list[str]:
    """A CPU training of simple_cnn on `write_learnable` images at 16 px, a quarter each
    for validation and test, nothing tracked; `extra` adds or overrides keys."""
    return [f"data.source={data}", "data.image_size=16", "data.augment=none",
            "data.cache=memory", "data.num_workers=1", "data.val_fraction=0.25",
            "data.test_fraction=0.25", "model.name=simple_cnn", "train.accelerator=cpu",
            "tracking.enabled=false", *extra]


def tiny_ddp_overrides(data: Path, runs: Path, name: str) -> list[str]:
    """A two-process CPU training of simple_cnn on `write_learnable` images (the DDP and
    torchrun tests)."""
    return tiny_overrides(data, "train.epochs=2", "train.batch_size=6", "train.lr=0.01",
                          "train.devices=2", f"output_dir={runs}", f"name={name}")
