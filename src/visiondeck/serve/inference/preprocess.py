"""Untrusted bytes → model input, off the event loop (runs in the engine's thread pool).

The one preparation path: `imaging.decode_image` (sniffed format, byte and pixel limits,
EXIF, odd modes) under `imaging.model_decode_limits` (a pixel cap derived from the
model's input size, below the server's ceiling) and then `Bundle.prepare` on the decoded
array (the shared resize and normalisation), so the service feeds the model exactly what
evaluation did. Alongside, it computes what history and drift need from the same decoded
array: a content hash, size/brightness/contrast, and an optional small thumbnail.

`is_small_image` decides which uploads `Engine.prepare` may decode on the event loop: only
those whose cost it can prove small from the bytes alone.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from visiondeck.export.bundle import Bundle
from visiondeck.imaging import ImageInfo, decode_image, model_decode_limits, plain_png_size
from visiondeck.monitor.reference import brightness_contrast
from visiondeck.serve.monitoring.observers import ImageStats

__all__ = ["INLINE_MAX_BYTES", "INLINE_MAX_PIXELS", "PreparedImage", "is_small_image",
           "make_thumbnail", "prepare_image"]

#: plain PNGs at most this large declaring at most this many pixels are decoded on the event
#: loop (see `is_small_image`): one inflate of under 32 KB into under 50 KB, ~0.1 ms at most
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

    `max_bytes`/`max_pixels` are the server's; `model_decode_limits` combines them with the
    Bundle's limits and the cap its input size implies.
    """
    spec = bundle.input
    limits = model_decode_limits(spec, max_pixels=max_pixels, max_bytes=max_bytes)
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
    """True only when decoding `data` is provably cheap: a plain PNG (`plain_png_size`:
    8-bit grey or RGB, nothing but IHDR, IDAT and IEND, CRCs right) of at most `max_bytes`
    declaring at most `max_pixels`.

    A header alone proves nothing about other files: a 30 KB PNG of 28×28 pixels can carry
    30 MB of compressed text that Pillow inflates while opening it, a small JPEG hundreds
    of progressive scans, a GIF or TIFF any number of frames. Those, and anything unusual,
    answer False and are decoded in the pool. No Pillow parser runs here: the chunks are
    walked (and their CRCs checked) in linear time.
    """
    if len(data) > max_bytes:
        return False
    size = plain_png_size(data)
    return size is not None and size[0] * size[1] <= max_pixels


def make_thumbnail(array: np.ndarray, size: int) -> bytes:
    """A PNG at most `size` pixels on its longer side (history pages show these)."""
    plane = array[:, :, 0] if array.shape[2] == 1 else array
    image = Image.fromarray(np.ascontiguousarray(plane))
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
