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
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

from visiondeck.export.bundle import Bundle
from visiondeck.imaging import DecodeLimits, ImageInfo, decode_image
from visiondeck.monitor.reference import brightness_contrast
from visiondeck.serve.monitoring.observers import ImageStats

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
    brightness, contrast = brightness_contrast(array)
    stats = ImageStats(
        width=int(array.shape[1]), height=int(array.shape[0]), brightness=brightness,
        contrast=contrast, channels=int(array.shape[2]), notes=decoded.info.notes,
    )
    thumb = None
    if thumbnail_size:
        thumb = (data if _is_own_thumbnail(data, decoded.info, thumbnail_size, spec.mode)
                 else make_thumbnail(array, thumbnail_size))
    return PreparedImage(tensor, hashlib.sha256(data).hexdigest(), stats, thumb)


def _is_own_thumbnail(data: bytes, info: ImageInfo, size: int, mode: str) -> bool:
    """An upload that already is what `make_thumbnail` would produce - a plain PNG no
    larger than the thumbnail, in the model's colour mode, nothing to rotate or flatten, no
    text or EXIF chunks to leak - is stored as its own thumbnail: re-encoding it costs more
    than the whole inference of a small model, and the browser shows the original as well."""
    return (info.format == "PNG" and max(info.width, info.height) <= size
            and not info.notes and info.source_mode == mode and len(data) <= _OWN_THUMB_BYTES
            and not any(chunk in data for chunk in _PRIVATE_PNG_CHUNKS))


_OWN_THUMB_BYTES = 16 * 1024
_PRIVATE_PNG_CHUNKS = (b"tEXt", b"iTXt", b"zTXt", b"eXIf")


def is_small_image(data: bytes, *, max_bytes: int = INLINE_MAX_BYTES,
                   max_pixels: int = INLINE_MAX_PIXELS) -> bool:
    """True when the bytes are few and the header declares a small image (header only).

    Anything unusual (not an image, a header Pillow cannot read) answers False, so the full
    decoder reports the problem from the pool.
    """
    if len(data) > max_bytes:
        return False
    png = _png_size(data)
    if png is not None:
        width, height = png
        return width * height <= max_pixels
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
    except Exception:
        return False
    return width * height <= max_pixels and frames == 1


def _png_size(data: bytes) -> tuple[int, int] | None:
    """A still PNG's size from its IHDR chunk (the first chunk, by the standard), without
    Pillow; None for anything else, animated PNGs (an `acTL` chunk) included."""
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    if b"acTL" in data:
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def make_thumbnail(array: np.ndarray, size: int) -> bytes:
    """A PNG at most `size` pixels on its longer side (history pages show these)."""
    plane = array[:, :, 0] if array.shape[2] == 1 else array
    image = Image.fromarray(np.ascontiguousarray(plane))
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
