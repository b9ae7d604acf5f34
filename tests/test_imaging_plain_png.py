"""The plain-PNG shortcut of `decode_image` gives exactly what the full path gives.

The shortcut (own chunk walk, then Pillow's zlib decoder) exists for speed only; every
image it takes must decode to the same array and info as through `Image.open`, and every
image it declines - or any damage it meets - must end in the full path's result or error.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from visiondeck import imaging
from visiondeck.imaging import DecodeLimits, ImageDecodeError, Problem, decode_image, plain_png_size

FILL = (255, 255, 255)
DEFAULT = DecodeLimits()


def _png(array: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _assemble(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body
                   + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


def _split_idat(data: bytes, pieces: int) -> bytes:
    """The same PNG with its pixel data spread over several IDAT chunks (as libpng and
    cameras write large images)."""
    chunks = _chunks(data)
    pixels = b"".join(body for kind, body in chunks if kind == b"IDAT")
    step = max(1, len(pixels) // pieces)
    parts = [pixels[i:i + step] for i in range(0, len(pixels), step)]
    head = [c for c in chunks if c[0] == b"IHDR"]
    return _assemble(head + [(b"IDAT", part) for part in parts] + [(b"IEND", b"")])


def _full(data: bytes, mode: str, limits: DecodeLimits = DEFAULT):
    """What `decode_image` answers through `Image.open` (the shortcut switched off)."""
    saved = imaging._plain_png
    imaging._plain_png = lambda *args: None
    try:
        return _outcome(data, mode, limits)
    finally:
        imaging._plain_png = saved


def _outcome(data: bytes, mode: str, limits: DecodeLimits = DEFAULT):
    try:
        decoded = decode_image(data, mode=mode, limits=limits)
    except ImageDecodeError as exc:
        return ("error", exc.problem)
    return ("ok", decoded.array.tobytes(), decoded.array.shape, decoded.info)


def _images() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(7)
    noise_l = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    noise_rgb = rng.integers(0, 256, (29, 31, 3), dtype=np.uint8)
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    cases = [("1x1 L", _png(np.array([[200]], dtype=np.uint8))),
             ("1x1 RGB", _png(np.array([[[1, 2, 3]]], dtype=np.uint8))),
             ("3x50 L", _png(noise_l[:3, :50])), ("ramp L", _png(ramp)),
             ("ramp RGB", _png(np.stack([ramp, ramp.T, 255 - ramp], axis=2)))]
    for level in (0, 1, 6, 9):
        cases.append((f"noise L level {level}", _png(noise_l, compress_level=level)))
        cases.append((f"noise RGB level {level}", _png(noise_rgb, compress_level=level)))
    cases.append(("noise RGB optimize", _png(noise_rgb, optimize=True)))
    cases.append(("noise L, 5 IDAT", _split_idat(_png(noise_l), 5)))
    cases.append(("noise RGB, 1-byte IDATs", _split_idat(_png(noise_rgb[:4, :4]), 10_000)))
    return cases


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize(("name", "data"), _images(), ids=[n for n, _ in _images()])
def test_plain_pngs_take_the_shortcut_and_match_the_full_path(name: str, data: bytes,
                                                              mode: str) -> None:
    assert imaging._plain_png(data, mode, DecodeLimits(), FILL) is not None, name
    assert _outcome(data, mode) == _full(data, mode)


def test_the_shortcut_does_not_open_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png(np.arange(28 * 28, dtype=np.uint32).reshape(28, 28).astype(np.uint8))
    expected = _full(data, "L")

    def no_open(*args, **kwargs):
        raise AssertionError("Image.open was called for a plain PNG")

    monkeypatch.setattr(Image, "open", no_open)
    assert _outcome(data, "L") == expected


def _declined() -> list[tuple[str, bytes, DecodeLimits]]:
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    plain = _png(grey)
    chunks = _chunks(plain)
    ihdr, idat = chunks[0], [c for c in chunks if c[0] == b"IDAT"]
    iend = (b"IEND", b"")
    bad_idat_crc = bytearray(plain)
    bad_idat_crc[8 + 25 + 4 + len(idat[0][1]) + 4] ^= 0xFF  # the first IDAT's CRC
    bad_ihdr_crc = bytearray(plain)
    bad_ihdr_crc[29] ^= 0xFF
    damaged_zlib = _assemble([ihdr, (b"IDAT", idat[0][1][:2] + b"\xff" * 40), iend])
    short_pixels = _assemble([ihdr, (b"IDAT", zlib.compress(b"\0" * 30)), iend])
    rgba = _png(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8))
    palette = io.BytesIO()
    Image.fromarray(grey).convert("P").save(palette, format="PNG")
    sixteen = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(sixteen, format="PNG")
    interlaced = bytearray(_assemble([ihdr, *idat, iend]))
    interlaced[28] = 1  # Adam7; the pixel data no longer matches, the full path says so
    interlaced = _assemble([(b"IHDR", bytes(interlaced[16:29])), *idat, iend])
    text = _assemble([ihdr, (b"tEXt", b"Comment\x00hello"), *idat, iend])
    trns = _assemble([ihdr, (b"tRNS", b"\x00\x10"), *idat, iend])
    gap = _assemble([ihdr, idat[0], (b"tEXt", b"a\0b"), (b"IDAT", b""), iend])
    return [
        ("IDAT CRC wrong", bytes(bad_idat_crc), DecodeLimits()),
        ("IHDR CRC wrong", bytes(bad_ihdr_crc), DecodeLimits()),
        ("zlib data damaged", damaged_zlib, DecodeLimits()),
        ("too few pixels", short_pixels, DecodeLimits()),
        ("cut in IDAT", plain[:60], DecodeLimits()),
        ("cut before IEND", plain[:-12], DecodeLimits()),
        ("bytes after IEND", plain + b"trailing", DecodeLimits()),
        ("RGBA", rgba, DecodeLimits()), ("palette", palette.getvalue(), DecodeLimits()),
        ("16-bit", sixteen.getvalue(), DecodeLimits()),
        ("interlaced", interlaced, DecodeLimits()), ("tEXt chunk", text, DecodeLimits()),
        ("tRNS chunk", trns, DecodeLimits()), ("IDAT after another chunk", gap, DecodeLimits()),
        ("over the pixel limit", plain, DecodeLimits(max_pixels=20 * 24 - 1)),
        ("under the minimum side", plain, DecodeLimits(min_side=21)),
    ]


@pytest.mark.parametrize(("name", "data", "limits"), _declined(),
                         ids=[n for n, _, _ in _declined()])
def test_anything_else_goes_the_full_way(name: str, data: bytes, limits: DecodeLimits
                                         ) -> None:
    assert imaging._plain_png(data, "L", limits, FILL) is None, name
    assert _outcome(data, "L", limits) == _full(data, "L", limits)


def test_the_declined_cases_still_fail_the_way_they_did() -> None:
    outcomes = {name: _outcome(data, "L", limits) for name, data, limits in _declined()}
    assert outcomes["IHDR CRC wrong"] == ("error", Problem.CORRUPT)
    assert outcomes["zlib data damaged"][0] == "error"
    assert outcomes["cut in IDAT"] == ("error", Problem.TRUNCATED)
    assert outcomes["over the pixel limit"] == ("error", Problem.BOMB)
    assert outcomes["under the minimum side"] == ("error", Problem.TOO_SMALL)
    assert outcomes["RGBA"][3].notes == ("alpha",)


def test_damaged_bytes_end_the_same_way_with_and_without_the_shortcut() -> None:
    """A thousand random corruptions of two plain PNGs (flipped, dropped and inserted
    bytes): the answer is always the full path's, success or the same `Problem`."""
    rnd = random.Random(11)
    rng = np.random.default_rng(11)
    originals = [_png(rng.integers(0, 256, (12, 9), dtype=np.uint8)),
                 _png(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8), compress_level=1)]
    for _ in range(500):
        for original in originals:
            data = bytearray(original)
            for _ in range(rnd.randint(1, 3)):
                where = rnd.randrange(8, len(data))
                action = rnd.random()
                if action < 0.6:
                    data[where] ^= 1 << rnd.randrange(8)
                elif action < 0.8:
                    del data[where]
                else:
                    data.insert(where, rnd.randrange(256))
            mode = rnd.choice(["L", "RGB"])
            assert _outcome(bytes(data), mode) == _full(bytes(data), mode), bytes(data)


def test_damaged_chunks_with_right_crcs_end_the_same_way() -> None:
    """The shortcut's own ground: IHDR fields and pixel data damaged, CRCs recomputed so
    the chunk walk accepts them. Sizes, depths, colour types and zlib streams that do not
    fit must end as the full path ends."""
    rnd = random.Random(5)
    rng = np.random.default_rng(5)
    for shape in ((10, 13), (7, 5, 3)):
        chunks = _chunks(_png(rng.integers(0, 256, shape, dtype=np.uint8)))
        for _ in range(400):
            mutated = []
            for kind, body in chunks:
                body = bytearray(body)
                if body and kind in (b"IHDR", b"IDAT") and rnd.random() < 0.6:
                    for _ in range(rnd.randint(1, 2)):
                        where = rnd.randrange(len(body))
                        if kind == b"IHDR" and rnd.random() < 0.5:
                            body[where] = rnd.choice([0, 1, 2, 3, 4, 6, 8, 16, 255])
                        else:
                            body[where] ^= 1 << rnd.randrange(8)
                mutated.append((kind, bytes(body)))
            data = _assemble(mutated)
            mode = rnd.choice(["L", "RGB"])
            assert _outcome(data, mode) == _full(data, mode), data


def test_plain_png_size_names_exactly_the_layouts_the_shortcut_walks() -> None:
    """`plain_png_size` is what lets the server decode a PNG on its event loop: it must
    answer for every layout the shortcut takes, and for nothing with a chunk, depth or
    colour type the shortcut would hand to `Image.open`."""
    for name, data in _images():
        with Image.open(io.BytesIO(data), formats=("PNG",)) as im:
            assert plain_png_size(data) == im.size, name
    layout_fine = {"zlib data damaged", "too few pixels", "over the pixel limit",
                   "under the minimum side"}  # the walk accepts these; the decode declines
    for name, data, _limits in _declined():
        assert (plain_png_size(data) is not None) == (name in layout_fine), name
    rnd = random.Random(17)
    original = _png(np.arange(60, dtype=np.uint8).reshape(6, 10))
    for _ in range(300):
        data = bytearray(original)
        data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        if plain_png_size(bytes(data)) is None:
            assert imaging._plain_png(bytes(data), "L", DEFAULT, FILL) is None
