"""Images unlike the training data, to measure how often the "unknown" rule fires.

The rejection threshold is set on validation images (in-distribution); whether it is any
use shows on images of *another* data set. Three sources, all prepared exactly like the
model's input (decode → resize → channels):

- "noise": uniform random pixels — always available, the easiest case;
- "photos": random crops of scikit-image's bundled photographs (astronaut, coffee, chelsea,
  camera, rocket...) — real pictures that are not the user's classes; used when
  scikit-image is installed (it is a test/dev dependency, not a runtime one);
- a folder the user names (`--ood DIR`): the honest test for their own deployment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["folder_images", "noise_images", "photo_crops", "reference_sets"]

_PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "rocket", "immunohistochemistry",
           "coins", "moon", "page", "text", "brick", "grass", "gravel")
_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _to_input(array: np.ndarray, spec: Any) -> np.ndarray:
    """uint8 (H, W[, C]) → uint8 (C, S, S) like the model's input (luma for one channel)."""
    from PIL import Image

    from visiondeck.imaging import resize_image

    if array.ndim == 2:
        array = array[:, :, None]
    if spec.channels == 1 and array.shape[2] == 3:
        array = np.asarray(Image.fromarray(array).convert("L"))[:, :, None]
    elif spec.channels == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    resized = resize_image(np.ascontiguousarray(array), spec.image_size, spec.resize)
    return resized.transpose(2, 0, 1)


def noise_images(spec: Any, n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, spec.channels, spec.image_size, spec.image_size),
                        dtype=np.uint8)


def photo_crops(spec: Any, n: int = 64, seed: int = 0) -> np.ndarray | None:
    """Random square crops (a quarter to the whole shorter side) of scikit-image photos."""
    try:
        from skimage import data as photos
    except ImportError:
        return None
    pictures = []
    for name in _PHOTOS:
        try:
            picture = np.asarray(getattr(photos, name)())
        except Exception:  # a photo that needs a download (pooch) is simply skipped
            continue
        if picture.dtype != np.uint8:
            continue
        if picture.ndim == 3 and picture.shape[2] == 4:
            picture = picture[:, :, :3]
        pictures.append(picture)
    if not pictures:
        return None
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        picture = pictures[i % len(pictures)]
        short = min(picture.shape[:2])
        side = int(rng.integers(max(8, short // 4), short + 1))
        top = int(rng.integers(0, picture.shape[0] - side + 1))
        left = int(rng.integers(0, picture.shape[1] - side + 1))
        out.append(_to_input(picture[top:top + side, left:left + side], spec))
    return np.stack(out)


def _image_files(folder: Path) -> Iterator[Path]:
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            if Path(name).suffix.lower() in _SUFFIXES:
                yield Path(root) / name


def folder_images(folder: str | os.PathLike[str], spec: Any, limit: int = 2000
                  ) -> tuple[np.ndarray, int]:
    """Every decodable image under `folder` (at most `limit`), and how many failed."""
    from visiondeck.imaging import ImageDecodeError, decode_image

    arrays, failed = [], 0
    for path in _image_files(Path(folder)):
        if len(arrays) >= limit:
            break
        try:
            decoded = decode_image(path, mode="L" if spec.channels == 1 else "RGB")
        except (ImageDecodeError, OSError):
            failed += 1
            continue
        arrays.append(_to_input(decoded.array, spec))
    shape = (0, spec.channels, spec.image_size, spec.image_size)
    return (np.stack(arrays) if arrays else np.zeros(shape, dtype=np.uint8)), failed


def reference_sets(spec: Any, *, folder: str | os.PathLike[str] | None = None, n: int = 64,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """{"noise": ..., "photos": ... (when scikit-image is there), "<folder name>": ...}."""
    sets = {"noise": noise_images(spec, n, seed)}
    crops = photo_crops(spec, n, seed)
    if crops is not None:
        sets["photos"] = crops
    if folder is not None:
        images, _ = folder_images(folder, spec)
        if len(images):
            sets[Path(folder).name or "folder"] = images
    return sets
