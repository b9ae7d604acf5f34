"""Which uploads `Engine.prepare` decodes on the event loop (provably cheap plain PNGs only),
and the model-derived limits `prepare_image` decodes under."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
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
            max_pixels, max_bytes, image_size = 10**8, None, 28
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


# ------------------------------------------- issue 18 (4): what the loop may and may not do


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (len(body).to_bytes(4, "big") + kind + body
            + zlib.crc32(kind + body).to_bytes(4, "big"))


def _ztxt_bomb() -> bytes:
    """The issue's upload: 28×28, 30 KB, 30 zTXt chunks of 1 MB each once inflated."""
    plain = _png(28, 28)
    text = zlib.compress(b"a" * 1_000_000, 9)
    chunks = b"".join(_chunk(b"zTXt", b"n%d\0\0" % i + text) for i in range(30))
    return plain[:33] + chunks + plain[33:]


def _encoded(fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, fmt, **options)
    return buffer.getvalue()


def test_a_small_png_with_compressed_text_goes_to_the_pool() -> None:
    bomb = _ztxt_bomb()
    assert len(bomb) <= INLINE_MAX_BYTES  # small in bytes and pixels, yet 30 MB of work
    assert not is_small_image(bomb)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x", zip=True)
    tagged = io.BytesIO()
    Image.new("L", (8, 8)).save(tagged, "PNG", pnginfo=info)
    assert not is_small_image(tagged.getvalue())


def test_only_plain_pngs_are_inline_and_no_pillow_parser_decides(monkeypatch) -> None:
    others = [_encoded("JPEG"), _encoded("JPEG", progressive=True), _encoded("GIF"),
              _encoded("BMP"), _encoded("TIFF"), _encoded("WEBP"), _png(28, 28)[:-12]]
    rgba = io.BytesIO()
    Image.new("RGBA", (8, 8)).save(rgba, "PNG")
    others.append(rgba.getvalue())

    opened: list[object] = []
    real_open = Image.open

    def recording_open(*args, **kwargs):
        opened.append(args)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    assert [is_small_image(data) for data in others] == [False] * len(others)
    rgb = _encoded("PNG")
    assert is_small_image(rgb) and is_small_image(_png(128, 128))
    assert not is_small_image(_png(129, 128))
    assert opened == []  # no Pillow parser ran: the chunk walk decided


def test_a_huge_png_is_refused_with_the_models_cap_without_decoding(monkeypatch) -> None:
    """Issue 18 (4): a 38 KB 6300×6300 grey PNG on a 28 px model cost 0.3-1.1 s under the
    server's 40 M pixel default; the model's cap (896² pixels) refuses it from its header."""
    from PIL import ImageFile

    from visiondeck.imaging import ImageDecodeError, Problem

    huge = _png(6300, 6300)
    assert len(huge) < 64 * 1024

    def refuse(*args, **kwargs):
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image, "frombytes", refuse)
    with pytest.raises(ImageDecodeError) as caught:
        _prepared(huge)  # the server's own limit is 10**8 pixels here
    assert caught.value.problem is Problem.BOMB
    assert "above the limit of 802,816" in caught.value.message
    assert "28 px input" in caught.value.message and "896×896" in caught.value.hint
    from visiondeck.serve.errors import error_answer

    status, body, _headers = error_answer(caught.value)
    assert status == 422 and body["error"] == "bomb"


def test_engine_decodes_on_the_loop_only_what_is_provably_small(monkeypatch, tmp_path) -> None:
    """`Engine.prepare` with a real Bundle: which thread ran each decode."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from tests.deploy.conftest import write_colour_bundle
    from visiondeck.export.bundle import load_bundle
    from visiondeck.serve.inference import engine as engine_module
    from visiondeck.serve.settings import ServeSettings

    threads: list[str] = []
    real = engine_module.prepare_image

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "prepare_image", recording)
    settings = ServeSettings(bundle=str(tmp_path / "b"), data_dir=tmp_path / "data",
                             store=False)
    engine = engine_module.Engine(settings)
    engine._model = SimpleNamespace(bundle=load_bundle(write_colour_bundle(tmp_path / "b")))
    engine._decode_pool = ThreadPoolExecutor(1, thread_name_prefix="visiondeck-decode")

    async def prepare_all() -> str:
        for data in (_png(16, 16), _ztxt_bomb(), _encoded("JPEG"), _encoded("PNG")):
            await engine.prepare(data)
        return threading.current_thread().name

    try:
        loop_thread = asyncio.run(prepare_all())
    finally:
        engine._decode_pool.shutdown()
    pool = "visiondeck-decode_0"
    assert threads == [loop_thread, pool, pool, loop_thread]
