"""Untrusted bytes → model input, off the event loop (runs in the engine's thread pool).

The one preparation path: `imaging.decode_image` (sniffed format, byte and pixel limits,
EXIF, odd modes) and then `Bundle.prepare` on the decoded array (the shared resize and
normalisation), so the service feeds the model exactly what evaluation did. Alongside,
it computes what history and drift need from the same decoded array: a content hash,
size/brightness/contrast, and an optional small thumbnail.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from visiondeck.export.bundle import Bundle
from visiondeck.imaging import DecodeLimits, decode_image
from visiondeck.serve.observers import ImageStats

__all__ = ["PreparedImage", "make_thumbnail", "prepare_image"]


@dataclass(frozen=True)
class PreparedImage:
    tensor: np.ndarray  # float32 (C, H, W)
    sha256: str
    stats: ImageStats
    thumbnail: bytes | None  # PNG


def prepare_image(data: bytes, bundle: Bundle, *, max_bytes: int, max_pixels: int,
                  thumbnail_size: int | None = None) -> PreparedImage:
    """Decode and prepare one image; raises `ImageDecodeError` for anything unusable.

    Limits are the stricter of the server's and the Bundle's.
    """
    spec = bundle.input
    limits = DecodeLimits(
        max_pixels=min(max_pixels, spec.max_pixels),
        max_bytes=min(max_bytes, spec.max_bytes) if spec.max_bytes else max_bytes,
    )
    decoded = decode_image(data, mode=spec.mode, limits=limits)  # type: ignore[arg-type]
    array = decoded.array
    tensor = bundle.prepare(array)
    stats = ImageStats(
        width=int(array.shape[1]), height=int(array.shape[0]),
        brightness=float(array.mean()), contrast=float(array.std()),
        channels=int(array.shape[2]), notes=decoded.info.notes,
    )
    thumb = make_thumbnail(array, thumbnail_size) if thumbnail_size else None
    return PreparedImage(tensor, hashlib.sha256(data).hexdigest(), stats, thumb)


def make_thumbnail(array: np.ndarray, size: int) -> bytes:
    """A PNG at most `size` pixels on its longer side (history pages show these)."""
    plane = array[:, :, 0] if array.shape[2] == 1 else array
    image = Image.fromarray(np.ascontiguousarray(plane))
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
