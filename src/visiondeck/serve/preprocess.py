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

__all__ = ["INLINE_MAX_BYTES", "INLINE_MAX_PIXELS", "PreparedImage", "is_small_image",
           "make_thumbnail", "prepare_image"]

#: uploads at most this large whose header declares at most this many pixels are decoded on
#: the event loop (see `Engine.prepare`): well under a millisecond of work
INLINE_MAX_BYTES = 32 * 1024
INLINE_MAX_PIXELS = 128 * 128


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


def is_small_image(data: bytes, *, max_bytes: int = INLINE_MAX_BYTES,
                   max_pixels: int = INLINE_MAX_PIXELS) -> bool:
    """True when the bytes are few and the header declares a small image (header only).

    Anything unusual (not an image, a header Pillow cannot read) answers False, so the full
    decoder reports the problem from the pool.
    """
    if len(data) > max_bytes:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
    except Exception:
        return False
    return width * height <= max_pixels and frames == 1


def make_thumbnail(array: np.ndarray, size: int) -> bytes:
    """A PNG at most `size` pixels on its longer side (history pages show these)."""
    plane = array[:, :, 0] if array.shape[2] == 1 else array
    image = Image.fromarray(np.ascontiguousarray(plane))
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
