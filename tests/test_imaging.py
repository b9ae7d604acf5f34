"""Tests for visiondeck.imaging: every image is generated here; nothing is fetched."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import resource
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFile, PngImagePlugin

from visiondeck import imaging
from visiondeck.errors import DataError, VisionDeckError
from visiondeck.imaging import (
    ALLOWED_FORMATS,
    MODEL_SIDE_FACTOR,
    PNG_METADATA_BUDGET,
    DecodedImage,
    DecodeLimits,
    ImageDecodeError,
    ImageInfo,
    Problem,
    decode_image,
    dhash,
    dhash_distance,
    model_decode_limits,
    probe_image,
    resize_image,
    sniff_format,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    """The reference picture, halved so the whole file stays fast: (150, 226, 3) uint8."""
    return np.ascontiguousarray(skimage.data.chelsea()[::2, ::2])


def encode(image: Image.Image | np.ndarray, fmt: str, **options: object) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload)
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def fake_png(width: int, height: int) -> bytes:
    """A PNG whose valid IHDR claims `width`×`height` but which carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))  # fmt: skip


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in grey levels."""
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def problem_of(source: object, **kwargs: object) -> Problem:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(source, **kwargs)  # type: ignore[arg-type]
    return caught.value.problem


@pytest.fixture
def pillow_open_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and refuse) every call to PIL.Image.open."""
    calls: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise AssertionError("Pillow must not parse this file")

    monkeypatch.setattr(Image, "open", refuse)
    return calls


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to decode pixel data blow up (it would then not be BOMB/probe-ok)."""

    def refuse(self: object) -> None:
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# ------------------------------------------------------------------------ each Problem


def test_zero_bytes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert problem_of(b"") is Problem.ZERO_BYTES
    assert problem_of(empty) is Problem.ZERO_BYTES
    assert problem_of(io.BytesIO()) is Problem.ZERO_BYTES


def test_text_and_random_bytes_are_not_images(tmp_path: Path) -> None:
    text = tmp_path / "holiday.jpg"  # the extension must not matter
    text.write_text("BMW 320i, bought 2019\nthis is a text file, not a photo\n")
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(text)
    assert caught.value.problem is Problem.NOT_AN_IMAGE
    assert str(text) in caught.value.message
    assert caught.value.hint
    with text.open("rb") as handle, pytest.raises(ImageDecodeError, match=r"holiday\.jpg"):
        decode_image(handle)  # a stream's name is used too
    noise = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert sniff_format(noise) is None
    assert problem_of(noise) is Problem.NOT_AN_IMAGE
    assert problem_of(b"PK\x03\x04" + noise) is Problem.NOT_AN_IMAGE  # a zip
    assert problem_of(b"<!DOCTYPE html><html></html>") is Problem.NOT_AN_IMAGE


REFUSED = {
    "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "EPS"),
    "dos_eps": (b"\xc5\xd0\xd3\xc6" + b"\x20\x00\x00\x00" * 7 + b"%!PS-Adobe-3.0", "EPS"),
    "svg": (b'\xef\xbb\xbf \n\t<svg xmlns="http://www.w3.org/2000/svg" width="10"/>', "SVG"),
    "svg_xml": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    "xml": (b'  <?xml version="1.0"?><note>hi</note>', "XML"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n", "PDF"),
    "ico": (b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00\x20\x00" + b"\0" * 64, "ICO"),
    "psd": (b"8BPS\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03" + b"\0" * 64, "PSD"),
    "heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    "avif": (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "AVIF"),
    "svg_utf16": ('\ufeff<svg xmlns="http://www.w3.org/2000/svg"/>'.encode("utf-16-le"), "SVG"),
    "ppm": (b"P6\n2 2\n255\n" + b"\0" * 12, "PNM"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_refused_formats_never_reach_pillow(kind: str, pillow_open_calls: list[object]) -> None:
    data, name = REFUSED[kind]
    for call in (decode_image, probe_image):
        with pytest.raises(ImageDecodeError) as caught:
            call(data)
        assert caught.value.problem is Problem.UNSUPPORTED_FORMAT
        assert name in caught.value.message
    assert pillow_open_calls == []


def test_pillow_only_gets_the_sniffed_format(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    real_open = Image.open

    def spy(fp: object, mode: str = "r", formats: object = None) -> Image.Image:
        seen.append(formats)
        return real_open(fp, mode, formats)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", spy)
    tiny = np.zeros((4, 4, 3), np.uint8)
    # with alpha: a plain PNG never reaches Image.open (tests/test_imaging_plain_png.py)
    decode_image(encode(np.zeros((4, 4, 4), np.uint8), "PNG"))
    probe_image(encode(tiny, "GIF"))
    assert [list(f) for f in seen] == [["PNG"], ["GIF"]]  # type: ignore[call-overload]


@pytest.mark.parametrize(("fmt", "name"), [("EPS", "EPS"), ("ICO", "ICO"), ("PDF", "PDF")])
def test_refused_formats_written_by_pillow(fmt: str, name: str) -> None:
    data = encode(np.zeros((16, 16, 3), np.uint8), fmt)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data)
    assert caught.value.problem is Problem.UNSUPPORTED_FORMAT
    assert name in caught.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_cut_in_half_is_truncated(fmt: str, ref: np.ndarray) -> None:
    data = encode(ref, fmt)
    half = data[: len(data) // 2]
    # what Pillow itself raises for this file (so the mapping below is not vacuous)
    with pytest.raises(OSError, match="truncated"), Image.open(io.BytesIO(half)) as im:
        im.load()
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(half)
    assert caught.value.problem is Problem.TRUNCATED
    assert "ends early" in caught.value.message


def test_signature_only_is_truncated() -> None:
    assert problem_of(PNG_SIGNATURE[:5]) is Problem.TRUNCATED
    assert problem_of(PNG_SIGNATURE + png_chunk(b"IHDR", b"\0" * 13)[:10]) is Problem.TRUNCATED


def test_header_cut_before_scan_data_is_truncated(ref: np.ndarray) -> None:
    data = encode(ref, "JPEG")
    start_of_scan = data.index(b"\xff\xda")
    assert problem_of(data[:start_of_scan]) is Problem.TRUNCATED
    webp = encode(ref, "WEBP", quality=80)
    assert problem_of(webp[: len(webp) // 2]) is Problem.TRUNCATED


def test_cut_tiff_header_reports_the_real_cause() -> None:
    data = encode(np.zeros((8, 8, 3), np.uint8), "TIFF")
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data[:20])  # Pillow itself only says "cannot identify image file"
    assert caught.value.problem is Problem.TRUNCATED
    assert "cannot identify" not in caught.value.message


def garbled_idat_png(ref: np.ndarray) -> bytes:
    data = bytearray(encode(ref, "PNG"))
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    for i in range(start + 16, start + min(length, 400)):
        data[i] ^= 0x55
    return bytes(data)


def test_garbled_idat_is_corrupt(ref: np.ndarray) -> None:
    data = garbled_idat_png(ref)
    with pytest.raises(OSError) as pillow_error, Image.open(io.BytesIO(data)) as im:
        im.load()
    assert "truncat" not in str(pillow_error.value)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data)
    assert caught.value.problem is Problem.CORRUPT
    assert "cannot be decoded" in caught.value.message


def test_hand_crafted_bomb_header(no_pixel_decoding: None) -> None:
    data = fake_png(100_000, 100_000)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data)  # no_pixel_decoding: refused from the header, never decoded
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 100_000
    assert caught.value.problem is Problem.BOMB
    assert "100,000×100,000 = 10,000,000,000 pixels" in caught.value.message
    assert "data.max_pixels" in caught.value.message
    with pytest.raises(ImageDecodeError) as probed:
        probe_image(data)
    assert probed.value.problem is Problem.BOMB


def test_bomb_checked_before_pixels_between_pillow_thresholds(no_pixel_decoding: None) -> None:
    # 100 M pixels: above our 64 M default and Pillow's warning level, below its error level
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may leak out
        assert problem_of(fake_png(10_000, 10_000)) is Problem.BOMB
        # a raised limit is honoured up to Pillow's hard ceiling, which still answers BOMB
        assert probe_image(fake_png(10_000, 10_000), limits=DecodeLimits(150_000_000)).width
        assert problem_of(fake_png(20_000, 20_000), limits=DecodeLimits(10**12)) is Problem.BOMB
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # untouched


def test_real_image_above_small_pixel_limit(ref: np.ndarray) -> None:
    data = encode(ref, "PNG")
    limits = DecodeLimits(max_pixels=150 * 226 - 1)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, limits=limits)
    assert caught.value.problem is Problem.BOMB
    assert "226×150 = 33,900 pixels" in caught.value.message
    with pytest.raises(ImageDecodeError):
        probe_image(data, limits=limits)
    assert decode_image(data, limits=DecodeLimits(max_pixels=150 * 226)).array.shape[:2] == (
        150,
        226,
    )


def test_too_small() -> None:
    data = encode(np.zeros((4, 4, 3), np.uint8), "PNG")
    assert problem_of(data, limits=DecodeLimits(min_side=16)) is Problem.TOO_SMALL
    assert decode_image(data, limits=DecodeLimits(min_side=4)).array.shape == (4, 4, 3)
    assert problem_of(encode(np.zeros((4, 40), np.uint8), "PNG"),
                      limits=DecodeLimits(min_side=5)) is Problem.TOO_SMALL  # fmt: skip


class RecordingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requested: list[int | None] = []

    def read(self, size: int | None = -1) -> bytes:
        self.requested.append(size)
        return super().read(size)


def test_too_large_for_paths_bytes_and_streams(tmp_path: Path, ref: np.ndarray) -> None:
    data = encode(ref, "PNG")
    path = tmp_path / "cat.png"
    path.write_bytes(data)
    small = DecodeLimits(max_bytes=len(data) - 1)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(path, limits=small)
    assert caught.value.problem is Problem.TOO_LARGE
    assert f"{len(data):,} bytes" in caught.value.message  # the size came from os.stat
    assert str(path) in caught.value.message
    assert problem_of(data, limits=small) is Problem.TOO_LARGE
    assert problem_of(bytearray(data), limits=small) is Problem.TOO_LARGE
    stream = RecordingStream(data)
    assert problem_of(stream, limits=small) is Problem.TOO_LARGE
    assert stream.requested == [len(data)]  # read at most max_bytes + 1, never everything
    with pytest.raises(ImageDecodeError):
        probe_image(path, limits=small)
    exact = DecodeLimits(max_bytes=len(data))
    for source in (path, str(path), data, RecordingStream(data)):
        assert decode_image(source, limits=exact).array.shape == (150, 226, 3)


def test_special_files_and_missing_paths(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[object] = []

    def scan() -> None:
        try:
            decode_image(fifo)
        except ImageDecodeError as error:
            outcome.append(error.problem)

    worker = threading.Thread(target=scan, daemon=True)
    worker.start()
    worker.join(timeout=5)
    if worker.is_alive():  # blocked opening the pipe: release it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("decoding a FIFO blocked")
    assert outcome == [Problem.NOT_AN_IMAGE]
    assert problem_of(tmp_path) is Problem.NOT_AN_IMAGE
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "missing.png")


def test_error_type_hint_and_pickling() -> None:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(b"hello world")
    error = caught.value
    assert isinstance(error, DataError) and isinstance(error, VisionDeckError)
    assert error.exit_code == 4
    assert error.hint and "Hint:" in str(error)
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.problem, clone.message, clone.hint) == (error.problem, error.message, error.hint)
    custom = ImageDecodeError(Problem.CORRUPT, "broken", hint="try again")
    assert custom.hint == "try again" and custom.problem == "corrupt"


# ----------------------------------------------------------------------- normalisation


def rotated_exif_jpeg(ref: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": store the picture turned CCW
    return encode(np.ascontiguousarray(np.rot90(ref)), "JPEG", quality=95, exif=exif)


def gray16_png(ref: np.ndarray) -> bytes:
    grey = np.asarray(Image.fromarray(ref).convert("L")).astype(np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


VARIANTS = {
    # name: (encoder, output mode, bound on mean |diff|, format, source mode, notes)
    "rgb_png": (lambda r: encode(r, "PNG"), "RGB", 0.0, "PNG", "RGB", ()),
    "rgb_jpeg": (lambda r: encode(r, "JPEG", quality=95), "RGB", 4.0, "JPEG", "RGB", ()),
    "cmyk_jpeg": (lambda r: encode(Image.fromarray(r).convert("CMYK"), "JPEG", quality=95),
                  "RGB", 4.0, "JPEG", "CMYK", ("cmyk",)),
    "palette_png": (lambda r: encode(Image.fromarray(r).quantize(256), "PNG"), "RGB", 4.0,
                    "PNG", "P", ("palette",)),
    "gray16_png": (gray16_png, "L", 0.0, "PNG", "I;16", ("16bit",)),
    "exif_jpeg": (rotated_exif_jpeg, "RGB", 4.0, "JPEG", "RGB", ("exif_rotated",)),
    "opaque_rgba_png": (lambda r: encode(Image.fromarray(r).convert("RGBA"), "PNG"), "RGB",
                        0.0, "PNG", "RGBA", ("alpha",)),
    "webp_lossless": (lambda r: encode(r, "WEBP", lossless=True), "RGB", 0.0, "WEBP", "RGB",
                      ()),
    "bmp": (lambda r: encode(r, "BMP"), "RGB", 0.0, "BMP", "RGB", ()),
    "tiff": (lambda r: encode(r, "TIFF", compression="tiff_deflate"), "RGB", 0.0, "TIFF",
             "RGB", ()),
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_same_picture_in_every_encoding_decodes_alike(variant: str, ref: np.ndarray) -> None:
    make, mode, bound, fmt, source_mode, notes = VARIANTS[variant]
    data = make(ref)
    expected = ref if mode == "RGB" else np.asarray(Image.fromarray(ref).convert("L"))[..., None]
    decoded = decode_image(data, mode=mode)
    assert decoded.array.shape == expected.shape
    assert mad(decoded.array, expected) <= bound
    assert decoded.info == ImageInfo(fmt, source_mode, 226, 150, 1, notes)
    assert probe_image(data) == decoded.info


def test_grey_output_is_601_luma_and_rgb_replicates_grey(ref: np.ndarray) -> None:
    grey = decode_image(encode(ref, "PNG"), mode="L").array
    r, g, b = (ref[..., i].astype(np.float64) for i in range(3))
    luma = r * 299 / 1000 + g * 587 / 1000 + b * 114 / 1000
    assert np.abs(grey[..., 0] - luma).max() <= 1.0
    as_rgb = decode_image(encode(grey[..., 0], "PNG")).array
    assert as_rgb.shape == (150, 226, 3)
    assert (as_rgb == grey).all()  # the grey channel repeated three times


DISPLAY = {  # EXIF orientation -> how the stored pixels must be turned for display
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(DISPLAY))
def test_every_exif_orientation(orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "PNG", exif=exif)
    decoded = decode_image(data)
    expected = DISPLAY[orientation](stored)
    assert np.array_equal(decoded.array, expected)
    assert decoded.array.flags.c_contiguous
    assert (decoded.info.height, decoded.info.width) == expected.shape[:2]
    assert decoded.info.notes == ("exif_rotated",)
    assert probe_image(data) == decoded.info


@pytest.mark.parametrize(("fmt", "dtype", "source_mode"),
                         [("PNG", "<u2", "I;16"), ("TIFF", ">u2", "I;16B")])  # fmt: skip
def test_sixteen_bit_values_are_scaled_not_clipped(fmt: str, dtype: str, source_mode: str) -> None:
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256).astype(dtype)
    decoded = decode_image(encode(Image.fromarray(ramp), fmt), mode="L")
    assert decoded.info.source_mode == source_mode and decoded.info.notes == ("16bit",)
    values = decoded.array[..., 0].ravel().astype(np.int64)
    expected = np.floor(np.arange(65536) * 255 / 65535 + 0.5).astype(np.int64)
    assert np.array_equal(values, expected)
    assert values[255] == 1 and values[-1] == 255 and values.min() == 0  # not clipped at 255
    assert (np.diff(values) >= 0).all()


def test_int32_and_float_modes() -> None:
    ints = np.array([[-5, 0, 257, 65535]], dtype=np.int32)
    decoded = decode_image(encode(Image.fromarray(ints), "TIFF"), mode="L")
    assert decoded.info.source_mode == "I" and decoded.info.notes == ("16bit",)
    assert decoded.array[0, :, 0].tolist() == [0, 0, 1, 255]
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    decoded = decode_image(encode(Image.fromarray(unit), "TIFF"), mode="L")
    assert decoded.info.notes == ("float",) and decoded.array[0, :, 0].tolist() == [0, 128, 255]
    wide = np.array([[-10.0, 0.0, 10.0]], dtype=np.float32)
    assert decode_image(encode(Image.fromarray(wide), "TIFF"), mode="L").array[0, :, 0].tolist() \
        == [0, 128, 255]  # fmt: skip


def test_bilevel(tmp_path: Path) -> None:
    bits = Image.fromarray(np.eye(8, dtype=bool))
    decoded = decode_image(encode(bits, "PNG"))
    assert decoded.info.source_mode == "1" and decoded.info.notes == ("bilevel",)
    assert decoded.array[0, 0].tolist() == [255, 255, 255]
    assert decoded.array[0, 1].tolist() == [0, 0, 0]


def test_transparency_is_composited_over_the_background() -> None:
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (10, 200, 30, 0)  # fully transparent
    pixels[0, 1] = (10, 200, 30, 255)  # opaque
    pixels[1, 0] = (0, 0, 0, 128)  # half-transparent black
    data = encode(pixels, "PNG")
    white = decode_image(data)
    assert white.info.notes == ("alpha",)
    assert white.array[0, 0].tolist() == [255, 255, 255]
    assert white.array[0, 1].tolist() == [10, 200, 30]
    assert all(126 <= v <= 128 for v in white.array[1, 0])
    custom = decode_image(data, background=(10, 20, 30))
    assert custom.array[0, 0].tolist() == [10, 20, 30]
    assert custom.array[0, 1].tolist() == [10, 200, 30]
    grey = decode_image(data, mode="L", background=(0, 0, 0))
    assert grey.array.shape == (2, 2, 1) and grey.array[0, 0, 0] == 0


def test_palette_and_grey_transparency() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    decoded = decode_image(encode(palette, "PNG", transparency=1), background=(0, 255, 0))
    assert decoded.info.notes == ("palette", "alpha")
    assert decoded.array[0].tolist() == [[255, 0, 0], [0, 255, 0]]
    grey_alpha = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")
    assert decode_image(encode(grey_alpha, "PNG"), mode="L").array[0, :, 0].tolist() == [255, 50]


def frames(colours: list[tuple[int, int, int]]) -> list[Image.Image]:
    return [Image.new("RGB", (12, 10), colour) for colour in colours]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF", "PNG", "MPO"])
def test_multi_frame_files_give_their_first_frame(fmt: str) -> None:
    first, *rest = frames([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    data = encode(first, fmt, save_all=True, append_images=rest, **(
        {"lossless": True} if fmt == "WEBP" else {}))  # fmt: skip
    decoded = decode_image(data)
    assert decoded.info.format == ("JPEG" if fmt == "MPO" else fmt)  # MPO is a JPEG to us
    assert decoded.info.n_frames == 3
    assert "multi_frame" in decoded.info.notes
    assert decoded.array.shape == (10, 12, 3)
    assert mad(decoded.array, np.array(frames([(255, 0, 0)])[0])) <= 2
    assert probe_image(data).n_frames == 3


def test_output_layout_dtype_and_ownership(ref: np.ndarray) -> None:
    data = encode(ref, "JPEG")
    for mode, channels in (("RGB", 3), ("L", 1)):
        decoded = decode_image(data, mode=mode)
        assert isinstance(decoded, DecodedImage)
        assert decoded.array.dtype == np.uint8
        assert decoded.array.shape == (150, 226, channels)
        assert decoded.array.flags.c_contiguous and decoded.array.flags.writeable
    with pytest.raises(ValueError):
        decode_image(data, mode="RGBA")  # type: ignore[arg-type]


def test_every_kind_of_source(tmp_path: Path, ref: np.ndarray) -> None:
    data = encode(ref, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with path.open("rb") as handle:
        sources = [data, bytearray(data), memoryview(data), path, str(path), io.BytesIO(data),
                   handle]  # fmt: skip
        for source in sources:
            assert np.array_equal(decode_image(source).array, ref)


# --------------------------------------------------------------------------- probing


def test_probe_reads_headers_only(ref: np.ndarray, no_pixel_decoding: None) -> None:
    data = encode(ref, "PNG")
    cut = data[: len(data) // 2]  # the pixel data is incomplete; the header is intact
    info = probe_image(cut)
    assert (info.format, info.width, info.height, info.n_frames) == ("PNG", 226, 150, 1)
    assert probe_image(data) == info
    for limits in (DecodeLimits(max_bytes=100), DecodeLimits(max_pixels=1000)):
        with pytest.raises(ImageDecodeError):
            probe_image(data, limits=limits)


def test_probe_then_decode_of_a_truncated_file(ref: np.ndarray) -> None:
    cut = encode(ref, "PNG")[:5000]
    assert probe_image(cut).width == 226
    assert problem_of(cut) is Problem.TRUNCATED


def test_sniff_format() -> None:
    assert {"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"} == ALLOWED_FORMATS
    tiny = np.zeros((2, 2, 3), np.uint8)
    for fmt in sorted(ALLOWED_FORMATS):
        assert sniff_format(encode(tiny, fmt)[:32]) == fmt
    assert sniff_format(b"BMW 320i is a car, not a bitmap") is None
    assert sniff_format(b"%PDF-1.4") is None
    assert sniff_format(b"") is None


# --------------------------------------------------------------------------- resizing


def test_resize_policies_shapes_and_types(ref: np.ndarray) -> None:
    grey = np.ascontiguousarray(ref[..., :1])
    for policy in ("stretch", "letterbox", "center_crop"):
        for size, shape in ((64, (64, 64)), ((48, 80), (48, 80))):
            out = resize_image(ref, size, policy)  # type: ignore[arg-type]
            assert out.shape == (*shape, 3) and out.dtype == np.uint8
            assert out.flags.c_contiguous
            assert resize_image(grey, size, policy).shape == (*shape, 1)  # type: ignore[arg-type]


def test_letterbox_keeps_ratio_and_pads_with_fill() -> None:
    wide = np.full((50, 100, 3), 200, np.uint8)
    out = resize_image(wide, 60, "letterbox", fill=7)
    assert out.shape == (60, 60, 3)
    content_rows = np.flatnonzero((out != 7).any(axis=(1, 2)))
    assert (content_rows.min(), content_rows.max()) == (15, 44)  # 30 rows: ratio 2:1 kept
    assert (out[:15] == 7).all() and (out[45:] == 7).all()
    assert (out[15:45] == 200).all()


def test_center_crop_crops_the_centre() -> None:
    wide = np.zeros((40, 120, 1), np.uint8)
    wide[:, 40:80] = 255  # the centre third is white
    out = resize_image(wide, 40, "center_crop")
    assert out.shape == (40, 40, 1)
    assert (out == 255).all()
    stretched = resize_image(wide, 40, "stretch")
    assert stretched.shape == (40, 40, 1)
    assert stretched[:, 0].max() == 0 and stretched[:, 20].min() == 255  # squeezed, not cut


def test_stretch_ignores_ratio_and_same_size_is_a_copy(ref: np.ndarray) -> None:
    out = resize_image(ref, (150, 113), "stretch")
    assert out.shape == (150, 113, 3)
    assert mad(out, ref[:, ::2]) < 12
    same = resize_image(ref, (150, 226), "letterbox")
    assert np.array_equal(same, ref) and not np.shares_memory(same, ref)
    with pytest.raises(ValueError):
        resize_image(ref.astype(np.float32), 10)


# ---------------------------------------------------------------------------- hashing


def test_dhash_survives_reencoding_and_resizing(ref: np.ndarray) -> None:
    original = dhash(ref)
    assert len(original) == 16 and int(original, 16) >= 0
    jpeg = decode_image(encode(ref, "JPEG", quality=95)).array
    assert dhash(jpeg) == original  # the common case: identical
    smaller = resize_image(ref, (75, 113))
    assert dhash_distance(dhash(smaller), original) <= 4  # the documented guarantee
    grey = decode_image(encode(ref, "PNG"), mode="L").array
    assert dhash_distance(dhash(grey), original) <= 4
    other = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])
    assert dhash_distance(dhash(other), original) > 16
    assert len(dhash(ref, hash_size=16)) == 64


def test_dhash_value_is_stable() -> None:
    """Hashes may be stored next to a split, so their layout must never change silently."""
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1))  # brighter to the right
    bands = np.concatenate([ramp[:5] if i % 2 == 0 else ramp[:5, ::-1] for i in range(8)])
    assert dhash(np.ascontiguousarray(bands[..., None])) == "ff00ff00ff00ff00"
    assert dhash(np.repeat(ramp[..., None], 3, axis=2)) == "f" * 16
    assert dhash_distance("ff00ff00ff00ff00", "ff00ff00ff00ff01") == 1


# ------------------------------------------------------------------------- robustness


def mutations(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    out = []
    for i in range(count):
        blob = bytearray(data)
        if i % 3 == 0:  # scattered byte flips
            for _ in range(int(rng.integers(1, 8))):
                blob[int(rng.integers(0, len(blob)))] ^= int(rng.integers(1, 256))
        elif i % 3 == 1:  # damage in the headers
            blob[int(rng.integers(0, min(len(blob), 120)))] = int(rng.integers(0, 256))
            blob = blob[: int(rng.integers(len(blob) // 2, len(blob) + 1))]
        else:  # truncation
            blob = blob[: int(rng.integers(1, len(blob)))]
        out.append(bytes(blob))
    return out


def test_random_damage_only_ever_raises_image_decode_error() -> None:
    rng = np.random.default_rng(1234)
    picture = np.ascontiguousarray(skimage.data.astronaut()[::16, ::16])  # 32×32
    originals = [encode(picture, "PNG"), encode(picture, "JPEG"),
                 encode(Image.fromarray(picture).quantize(32), "GIF")]  # fmt: skip
    limits = DecodeLimits(max_pixels=2_000_000)
    seen: set[Problem] = set()
    for original in originals:
        for blob in mutations(original, rng, 120):
            for call in (decode_image, probe_image):
                try:
                    result = call(blob, limits=limits)
                except ImageDecodeError as error:
                    seen.add(error.problem)
                else:
                    if isinstance(result, DecodedImage):
                        assert result.array.dtype == np.uint8 and result.array.ndim == 3
    assert {Problem.CORRUPT, Problem.TRUNCATED} <= seen


def test_pillow_and_warning_state_is_left_alone(ref: np.ndarray) -> None:
    filters = list(warnings.filters)
    for blob in (encode(ref, "PNG"), b"junk", fake_png(100_000, 100_000), garbled_idat_png(ref)):
        with contextlib.suppress(ImageDecodeError):
            decode_image(blob)
    assert warnings.filters == filters
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_module_imports_neither_torch_nor_anything_heavy() -> None:
    src = Path(imaging.__file__).resolve().parents[1]
    code = ("import sys, visiondeck.imaging; "
            "bad = [m for m in ('torch', 'skimage', 'scipy') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# ------------------------------------- served models: a cap from the model, tamed metadata


@dataclass(frozen=True)
class Spec:
    """What `model_decode_limits` reads of a Bundle's `InputSpec`."""

    image_size: int = 28
    max_pixels: int = 64_000_000
    max_bytes: int | None = 32 * 1024 * 1024


def test_model_decode_limits_derive_the_pixel_cap_from_the_input_side() -> None:
    limits = model_decode_limits(Spec(28), max_pixels=40_000_000, max_bytes=10 << 20)
    assert MODEL_SIDE_FACTOR == 32 and limits.max_pixels == 896 * 896 == 802_816
    assert limits.max_bytes == 10 << 20 and limits.reduce_jpeg and limits.min_side == 1
    assert "896×896" in limits.pixels_from and "28 px" in limits.pixels_from
    # a bigger model meets the server's ceiling first; a Bundle's own limits still bind
    big = model_decode_limits(Spec(224), max_pixels=40_000_000, max_bytes=10 << 20)
    assert big.max_pixels == 40_000_000 and "VISIONDECK_MAX_PIXELS" in big.pixels_from
    own = model_decode_limits(Spec(224, max_pixels=1_000, max_bytes=500), max_pixels=40_000_000,
                              max_bytes=10 << 20)  # fmt: skip
    assert (own.max_pixels, own.max_bytes) == (1_000, 500) and "Bundle" in own.pixels_from
    assert model_decode_limits(Spec(max_bytes=None), max_pixels=9, max_bytes=None).max_bytes is None


def grey_png_of(width: int, height: int) -> bytes:
    """A genuine all-black grey PNG, compressed row by row (6300×6300: 40 KB, ~0.1 s)."""
    packer, row = zlib.compressobj(9), b"\0" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))  # fmt: skip


def test_a_huge_png_on_a_small_model_is_refused_before_any_pixel(
        no_pixel_decoding: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 18 (4): 38 KB, 6300×6300, decoded in 0.3-1.1 s under the 40 M default
    data = grey_png_of(6300, 6300)
    assert len(data) < 64 * 1024

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the plain-PNG path must not inflate pixels either")

    monkeypatch.setattr(Image, "frombytes", refuse)
    limits = model_decode_limits(Spec(28), max_pixels=40_000_000, max_bytes=10 << 20)
    for call in (decode_image, probe_image):
        with pytest.raises(ImageDecodeError) as caught:
            call(data, limits=limits)
        error = caught.value
        assert error.problem is Problem.BOMB
        assert "6,300×6,300 = 39,690,000 pixels, above the limit of 802,816" in error.message
        assert "32× the model's 28 px input side" in error.message
        assert "896×896" in error.hint and "data.max_pixels" not in error.message + error.hint


def test_a_jpeg_over_the_cap_is_decoded_at_a_reduced_dct_scale() -> None:
    photo = encode(Image.new("RGB", (1000, 600), (200, 30, 30)), "JPEG", quality=90)
    limits = DecodeLimits(max_pixels=100_000, reduce_jpeg=True)
    decoded = decode_image(photo, limits=limits)
    # 1/2 would still be 150,000 pixels: libjpeg decodes at 1/4
    assert decoded.array.shape == (150, 250, 3)
    assert decoded.info.notes == ("reduced",) and decoded.info.width == 250
    assert probe_image(photo, limits=limits) == decoded.info
    assert np.abs(decoded.array.reshape(-1, 3).mean(0) - (200, 30, 30)).max() < 4
    # within the cap: full size, the very array a plain decode gives
    within = decode_image(photo, limits=DecodeLimits(max_pixels=600_000, reduce_jpeg=True))
    assert within.info.notes == () and np.array_equal(within.array, decode_image(photo).array)
    # orientation still applies to the reduced picture
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = encode(Image.new("RGB", (1000, 600), (200, 30, 30)), "JPEG", exif=exif)
    assert decode_image(turned, limits=limits).array.shape == (250, 150, 3)
    # without reduce_jpeg, too big even at 1/8 (125×75), or not a JPEG: refused
    assert problem_of(photo, limits=DecodeLimits(max_pixels=100_000)) is Problem.BOMB
    assert problem_of(photo, limits=DecodeLimits(9_000, reduce_jpeg=True)) is Problem.BOMB
    as_png = encode(Image.new("RGB", (1000, 600)), "PNG")
    assert problem_of(as_png, limits=limits) is Problem.BOMB


def ztxt_chunk(key: bytes, text: bytes) -> bytes:
    return png_chunk(b"zTXt", key + b"\0\0" + zlib.compress(text, 9))


def with_chunks(png: bytes, *chunks: bytes) -> bytes:
    """`png` with `chunks` right after IHDR (read by `Image.open`, before any pixel)."""
    return png[:33] + b"".join(chunks) + png[33:]


@pytest.fixture
def inflated(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes each Python-level zlib inflate produced (ours and Pillow's metadata chunks)."""
    sizes: list[int] = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *args: object) -> None:
            self.inner = real(*args)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self.inner.decompress(data, max_length)
            sizes.append(len(out))
            return out

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    return sizes


def test_a_ztxt_bomb_is_never_inflated_past_the_budget(inflated: list[int]) -> None:
    # issue 18 (4): 30 KB of PNG, 30 zTXt chunks of 1 MB each (Pillow's per-chunk limit)
    plain = encode(Image.new("L", (28, 28), 77), "PNG")
    bomb = with_chunks(plain, *(ztxt_chunk(b"n%d" % i, b"a" * 1_000_000) for i in range(30)))
    assert len(bomb) < 40_000
    decoded = decode_image(bomb, mode="L")
    assert decoded.array.shape == (28, 28, 1) and (decoded.array == 77).all()
    probe_image(bomb)
    assert sum(inflated) <= 2 * (PNG_METADATA_BUDGET + 1)  # two calls, one budget each
    assert PngImagePlugin.MAX_TEXT_CHUNK == ImageFile.SAFEBLOCK  # no Pillow global touched


def test_many_small_text_chunks_share_one_budget(inflated: list[int]) -> None:
    plain = encode(Image.new("L", (16, 16), 5), "PNG")
    chunks = [ztxt_chunk(b"k%d" % i, b"b" * 5_000) for i in range(2_000)]  # 10 MB of text
    itxt = png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(b"c" * 10**6))
    iccp = png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"d" * 10**6))
    data = with_chunks(plain, *chunks, itxt, iccp)
    tamed = imaging._tame_png(data)
    kept = tamed.count(b"zTXt")
    assert 0 < kept <= PNG_METADATA_BUDGET // 5_000 and b"iTXt" not in tamed
    assert b"iCCP" not in tamed
    assert sum(inflated) <= PNG_METADATA_BUDGET + 1
    assert decode_image(data, mode="L").array.shape == (16, 16, 1)


def test_small_metadata_stays_and_still_orients_the_picture() -> None:
    """ImageMagick stores EXIF as a zTXt "Raw profile type exif"; Pillow reads orientation
    from it and from an XMP packet (an iTXt chunk): small ones must survive the taming."""
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    profile = f"\nexif\n{len(raw):8d}\n{raw.hex()}\n".encode()
    picture = np.zeros((10, 30), np.uint8)
    picture[:, :5] = 255  # a bright left edge
    plain = encode(picture, "PNG")
    tagged = with_chunks(plain, ztxt_chunk(b"Raw profile type exif", profile))
    assert imaging._tame_png(tagged) is tagged  # nothing dropped, not even copied
    decoded = decode_image(tagged, mode="L")
    assert decoded.info.notes == ("exif_rotated",) and decoded.array.shape == (30, 10, 1)
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    packet = png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(xmp))
    assert decode_image(with_chunks(plain, packet), mode="L").array.shape == (30, 10, 1)
    # behind a bomb the budget is spent: the picture still decodes, unrotated
    bombed = with_chunks(plain, ztxt_chunk(b"big", b"a" * 10**6), packet)
    assert decode_image(bombed, mode="L").array.shape == (10, 30, 1)
