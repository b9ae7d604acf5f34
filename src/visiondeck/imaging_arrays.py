"""What is done to a decoded picture's array: the one resize, and a perceptual hash.

Training, evaluation and serving resize through `resize_image`, so a model sees the same
pixels wherever it runs; the data catalog groups near-duplicates by `dhash`. Both take the
uint8 (H, W, C) arrays `imaging.decode_image` returns and never see a file's bytes, so they
live apart from the decoder (imaging.py), which re-exports them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

__all__ = ["dhash", "dhash_distance", "resize_image"]


def _check_array(array: np.ndarray) -> None:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a uint8 (H, W, C) array with C in 1, 3, 4; got "
                         f"{array.dtype} {array.shape}")  # fmt: skip


def _pil_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    grey = array.shape[2] == 1
    plane = Image.fromarray(np.ascontiguousarray(array[:, :, 0] if grey else array))
    out = np.array(plane.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None))
    return out[:, :, None] if grey else out


def resize_image(
    array: np.ndarray,
    size: int | tuple[int, int],
    policy: Literal["stretch", "letterbox", "center_crop"] = "stretch",
    *,
    fill: int = 0,
) -> np.ndarray:
    """The ONE resize used by training evaluation and serving, so preprocessing is identical.

    `size` is an int for a square or (height, width). stretch ignores the aspect ratio;
    letterbox fits inside, keeping the ratio, and pads with `fill` around the centred picture;
    center_crop scales until the target is covered (for a square: the shorter side matches)
    and crops the centre. Pillow BILINEAR with reducing_gap=None: downscaling is antialiased.
    Always returns a new C-contiguous array, a plain copy when already at size.
    """
    _check_array(array)
    if policy not in ("stretch", "letterbox", "center_crop"):
        raise ValueError(f"unknown resize policy {policy!r}")
    if not 0 <= fill <= 255:
        raise ValueError(f"fill must be in 0..255, not {fill}")
    height, width = (size, size) if isinstance(size, int | np.integer) else size
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, not {size!r}")
    src_h, src_w = array.shape[:2]
    if (src_h, src_w) == (height, width):
        return np.array(array, order="C", copy=True)
    if policy == "stretch":
        return _pil_resize(array, height, width)
    if policy == "letterbox":
        scale = min(height / src_h, width / src_w)
        new_h = min(height, max(1, round(src_h * scale)))
        new_w = min(width, max(1, round(src_w * scale)))
        canvas = np.full((height, width, array.shape[2]), fill, dtype=np.uint8)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        canvas[top : top + new_h, left : left + new_w] = _pil_resize(array, new_h, new_w)
        return canvas
    scale = max(height / src_h, width / src_w)
    new_h, new_w = max(height, round(src_h * scale)), max(width, round(src_w * scale))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    scaled = _pil_resize(array, new_h, new_w)
    return np.ascontiguousarray(scaled[top : top + height, left : left + width])


def dhash(array: np.ndarray, hash_size: int = 8) -> str:
    """Perceptual difference hash of the grey picture, as hex (hash_size² bits, row-major).

    What we promise (and test on photos): a copy re-encoded as JPEG at quality >= 90 or
    resized lands within `dhash_distance(a, b) <= hash_size² // 16` bits (4 of 64), usually
    at 0; unrelated pictures differ in about half the bits. Equal hashes are a cheap bucket
    key for grouping near-duplicates, the distance catches the rest. The bit layout is
    stable (row-major, first bit most significant, 1 = right neighbour brighter), so stored
    hashes stay comparable.
    """
    _check_array(array)
    if hash_size < 2:
        raise ValueError("hash_size must be at least 2")
    if array.shape[2] == 1:
        grey = Image.fromarray(np.ascontiguousarray(array[:, :, 0]))
    else:
        grey = Image.fromarray(np.ascontiguousarray(array[:, :, :3])).convert("L")
    small = np.asarray(grey.resize((hash_size + 1, hash_size), Image.Resampling.BOX), np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    if bits.size % 8 == 0:  # the common sizes: packbits is ~50x faster than a bit string
        return np.packbits(bits).tobytes().hex()
    value = int("".join("1" if bit else "0" for bit in bits), 2)
    return f"{value:0{(bits.size + 3) // 4}x}"


def dhash_distance(a: str, b: str) -> int:
    """Hamming distance between two `dhash` strings of the same hash_size."""
    if len(a) != len(b):
        raise ValueError("hashes of different sizes cannot be compared")
    return (int(a, 16) ^ int(b, 16)).bit_count()
