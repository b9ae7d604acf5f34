"""Which uploads `Engine.prepare` decodes on the event loop (header-proven small ones only)."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from visiondeck.serve.inference.preprocess import INLINE_MAX_BYTES, is_small_image


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_small_png_is_decoded_inline() -> None:
    assert is_small_image(_png(28, 28))


def test_large_dimensions_go_to_the_pool_even_when_the_file_is_tiny() -> None:
    # a 4000×4000 black PNG compresses to a few KB: bytes alone must not decide
    data = _png(4000, 4000)
    assert len(data) < INLINE_MAX_BYTES
    assert not is_small_image(data)


def test_a_forged_header_claiming_a_huge_image_goes_to_the_pool() -> None:
    # IHDR of a 100000×100000 image followed by nothing: the full decoder refuses it there
    ihdr = b"IHDR" + (100_000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    data = (b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr
            + zlib.crc32(ihdr).to_bytes(4, "big"))
    assert not is_small_image(data)


def test_garbage_and_oversized_bytes_go_to_the_pool() -> None:
    assert not is_small_image(b"not an image at all")
    assert not is_small_image(_png(28, 28) + b"\0" * INLINE_MAX_BYTES)


def test_animated_images_go_to_the_pool() -> None:
    frames = [Image.new("L", (16, 16), color) for color in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert not is_small_image(buffer.getvalue())


def test_an_animated_png_goes_to_the_pool() -> None:
    frames = [Image.new("L", (16, 16), color) for color in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    assert b"acTL" in buffer.getvalue()
    assert not is_small_image(buffer.getvalue())


def _prepared(data: bytes, mode: str = "L"):
    from visiondeck.serve.inference.preprocess import prepare_image

    class _Bundle:  # what prepare_image reads of a Bundle
        class input:
            max_pixels, max_bytes = 10**8, None
        prepare = staticmethod(lambda array: array)

    _Bundle.input.mode = mode
    return prepare_image(data, _Bundle, max_bytes=10**6, max_pixels=10**8, thumbnail_size=64)


def test_a_small_plain_png_is_its_own_thumbnail_and_others_are_reencoded() -> None:
    plain = _png(28, 28)
    assert _prepared(plain).thumbnail == plain
    big = _prepared(_png(100, 80)).thumbnail  # larger than a thumbnail: shrunk
    assert big != _png(100, 80) and Image.open(io.BytesIO(big)).size == (64, 51)
    rgb = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(rgb, "PNG")
    assert _prepared(rgb.getvalue()).thumbnail != rgb.getvalue()  # not the model's mode
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone private")
    tagged = io.BytesIO()
    Image.new("L", (20, 20), 7).save(tagged, "PNG", pnginfo=info)
    thumb = _prepared(tagged.getvalue()).thumbnail
    assert thumb != tagged.getvalue() and b"someone private" not in thumb
    for thumbnail in (thumb, big):
        assert Image.open(io.BytesIO(thumbnail)).format == "PNG"
