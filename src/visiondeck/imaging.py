"""The one safe decoder of untrusted image bytes.

Data validation, training datasets, `predict` and the REST API all decode through here, so
a picture becomes the same array everywhere and a broken or hostile file fails the same way
everywhere: as an `ImageDecodeError` whose `problem` names the kind of failure. Nothing else
escapes `decode_image`/`probe_image` for any input bytes (MemoryError and KeyboardInterrupt
aside). A path that cannot be opened (missing, permission denied) raises the ordinary
`OSError`: an I/O fault, not a property of the bytes. Non-regular files are `NOT_AN_IMAGE`.

This module is the decoder and its policies; five neighbours hold what reads apart from
it and import nothing of it: the format allow-list (imaging_formats.py), PNG chunk work
done without Pillow (imaging_png.py), what is done to a decoded array - resize, dhash
(imaging_arrays.py), what a decode may cost - `DecodeLimits`, `model_decode_limits`
(imaging_limits.py), and how a decode fails - `Problem`, `ImageDecodeError` and the
TRUNCATED/CORRUPT rules (imaging_problems.py). Every public name of all six is importable
from here.

Policies
--------
* Formats are allow-listed by magic bytes, never by file name: JPEG (MPO too), PNG (APNG),
  GIF, BMP, TIFF (BigTIFF) and WebP. Formats we know but refuse - EPS/PostScript, PDF,
  SVG/XML, ICO/CUR, PSD, HEIC/AVIF, JPEG 2000, JPEG XL, PNM, QOI, DDS, ICNS, XCF, OpenEXR,
  Radiance HDR, WMF, DICOM - are `UNSUPPORTED_FORMAT` naming the format; anything else is
  `NOT_AN_IMAGE` (`TRUNCATED` if it is a cut-off JPEG/PNG signature). `Image.open` then gets
  `formats=` holding only the sniffed format, so Pillow can never pick another plugin (nor
  run Ghostscript).
* `max_bytes` (`TOO_LARGE`) is enforced before parsing: `os.stat` for paths, `len` for bytes,
  reading at most `max_bytes + 1` bytes from streams. Directories, FIFOs and devices are
  never read (`NOT_AN_IMAGE`), so a folder scan cannot hang. Input is read exactly once.
* `BOMB`: `Image.open` is lazy, so width*height of the first frame is checked against
  `max_pixels` before any pixel data is decoded. Pillow's own `DecompressionBombError`, and
  its `DecompressionBombWarning` while our limit is not above Pillow's, become `BOMB` too
  (via `warnings.catch_warnings()`; no Pillow global is touched). Before Python 3.14 warning
  filters are process-wide, so concurrent threads may see each other's filters; results stay
  correct because the `max_pixels` check above is authoritative. A limit above twice
  `PIL.Image.MAX_IMAGE_PIXELS` still meets Pillow's hard ceiling.
* `TOO_SMALL`: the smaller side is below `min_side` (orientation cannot change it).
* Served models: `model_decode_limits` is the one place a served upload's limits come
  from; its pixel cap is `(MODEL_SIDE_FACTOR * input side)²` (imaging_limits.py says
  why), and a BOMB message names that cap and where it comes from. With `reduce_jpeg` (on
  for served models), a JPEG over the cap is not refused but decoded at the largest DCT
  scale (1/2, 1/4, 1/8) that fits, by libjpeg itself (Pillow's `draft`): a 6000×6000 photo
  on a 28 px model decodes at 750×750 in 14 ms instead of 110 ms and 108 MB ("reduced");
  JPEGs within the cap decode at full size, as in evaluation. Pillow's own ceiling
  (`Image.MAX_IMAGE_PIXELS`) still refuses bigger JPEGs before any scale is chosen.
* PNG metadata: compressed metadata chunks (zTXt, compressed iTXt, iCCP) that would take
  a file's inflated metadata past `PNG_METADATA_BUDGET` (256 KiB) are dropped, uninflated,
  before Pillow sees the file; small ones stay, so the orientation they carry still
  applies (imaging_png.py says why and how). No Pillow global is changed for this.
* Multi-frame files (animated GIF/WebP/APNG, multi-page TIFF, MPO): first frame only;
  `n_frames` counts them ("multi_frame"). Damage in any frame fails the decode.
* EXIF orientation is applied with `ImageOps.exif_transpose`'s table ("exif_rotated" when the
  tag was 2..8); width/height are the oriented ones; unreadable EXIF counts as orientation 1.
* To 8-bit: CMYK (Adobe-inverted JPEG CMYK too) -> RGB ("cmyk"). "I;16*" and "I" are
  *scaled*, round(v * 255 / 65535) ("16bit"); "I" clips negatives to 0 and, if its maximum
  exceeds 65535, is scaled by 255 / max instead. "F" is multiplied by 255 when all values lie
  in 0..1, else min-max scaled ("float"; NaN/inf count as 0). Palettes are expanded
  ("palette"), mode "1" too ("bilevel"). CIE L*a*b* is `UNSUPPORTED_FORMAT`.
* Alpha (RGBA, RGBa, LA, La, PA, or transparency info on P/L/RGB/I;16) is composited over the
  fixed `background` ("alpha") - also when fully opaque, so notes never depend on pixels.
* Output "L" is ITU-R 601-2 luma (Pillow's `convert("L")`) after compositing; "RGB" repeats
  grey. Arrays are uint8 (H, W, C), C-contiguous, writable and owned by the caller.
* Failures: a missing end marker or declared length, or a message about the end of data,
  is `TRUNCATED`, every other failure `CORRUPT` (imaging_problems.py has the rules).
  `ImageFile.LOAD_TRUNCATED_IMAGES` is never set; Pillow's `UserWarning`s are silenced.
* Plain PNGs - 8-bit grey or RGB, not interlaced, nothing but IHDR, IDAT and IEND chunks,
  every CRC right, no byte after IEND - skip `Image.open`: imaging_png.py walks their
  chunks and the pixels go straight to Pillow's zlib decoder (`Image.frombytes`), in ~60 %
  of the time. Anything else, and anything that fails there, takes the full path above,
  so every error, array and note is the full path's.
* `notes` follow the order of `NOTE_VOCABULARY`; "reduced" marks a JPEG decoded at a
  DCT scale below 1 (width/height are then the decoded ones). `probe_image` returns what
  `decode_image` would, except that EXIF stored after a PNG's pixel data is only seen by a
  full decode.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image

from visiondeck.imaging_arrays import dhash, dhash_distance, resize_image
from visiondeck.imaging_formats import ALLOWED_FORMATS, refused_format, sniff_format
from visiondeck.imaging_limits import (
    MODEL_SIDE_FACTOR,
    DecodeLimits,
    ModelInput,
    model_decode_limits,
)
from visiondeck.imaging_png import (
    PLAIN_PNG_MODES,
    PNG_METADATA_BUDGET,
    plain_png_layout,
    plain_png_size,
)
from visiondeck.imaging_png import tame_png as _tame_png
from visiondeck.imaging_problems import ImageDecodeError, Problem
from visiondeck.imaging_problems import bomb as _bomb
from visiondeck.imaging_problems import classify as _classify
from visiondeck.imaging_problems import fail as _fail
from visiondeck.imaging_problems import pillow_bomb as _pillow_bomb

__all__ = [
    "ALLOWED_FORMATS", "MODEL_SIDE_FACTOR", "NOTE_VOCABULARY", "PNG_METADATA_BUDGET",
    "DecodeLimits", "DecodedImage", "ImageDecodeError", "ImageInfo", "ModelInput", "Problem",
    "decode_image", "dhash", "dhash_distance", "model_decode_limits", "plain_png_size",
    "probe_image", "resize_image", "sniff_format",
]  # fmt: skip

NOTE_VOCABULARY: tuple[str, ...] = (
    "cmyk", "16bit", "palette", "alpha", "exif_rotated", "multi_frame", "float", "bilevel",
    "reduced",
)  # fmt: skip
Source = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO
_DEFAULT_LIMITS = DecodeLimits()  # frozen: one shared default is safe


@dataclass(frozen=True)
class ImageInfo:
    format: str
    source_mode: str
    width: int
    height: int
    n_frames: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class DecodedImage:
    array: np.ndarray
    info: ImageInfo


# --------------------------------------------------------------------- reading, sniffing


def _read_source(source: Source, limits: DecodeLimits) -> tuple[bytes, str | None]:
    cap, name = limits.max_bytes, None
    if isinstance(source, bytes | bytearray | memoryview):
        data = source if isinstance(source, bytes) else bytes(source)
    elif isinstance(source, str | os.PathLike):
        name = os.fsdecode(source)
        info = os.stat(source)
        if not stat.S_ISREG(info.st_mode):
            raise _fail(Problem.NOT_AN_IMAGE, "not a regular file", name)
        if cap is not None and info.st_size > cap:
            raise _fail(Problem.TOO_LARGE, f"file is {info.st_size:,} bytes, above the limit "
                        f"of {cap:,}", name)  # fmt: skip
        with open(source, "rb") as fh:
            data = fh.read() if cap is None else fh.read(cap + 1)
    elif hasattr(source, "read"):
        stream_name = getattr(source, "name", None)
        name = stream_name if isinstance(stream_name, str) else None
        data = bytes(source.read() if cap is None else source.read(cap + 1))
    else:
        raise TypeError(f"cannot decode an image from {type(source).__name__}")
    if cap is not None and len(data) > cap:
        raise _fail(Problem.TOO_LARGE, f"more than {cap:,} bytes, above the limit", name)
    if not data:
        raise _fail(Problem.ZERO_BYTES, "the file is empty (0 bytes)", name)
    return data, name


def _sniff_or_fail(data: bytes, name: str | None) -> str:
    fmt = sniff_format(data[:32])
    if fmt is not None:
        return fmt
    refused = refused_format(data[:4096])
    if refused is not None:
        raise _fail(Problem.UNSUPPORTED_FORMAT, f"{refused} files are not supported", name)
    if len(data) > 1 and any(m.startswith(data) for m in (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a")):
        raise _fail(Problem.TRUNCATED, f"only {len(data)} bytes of an image signature", name)
    raise _fail(Problem.NOT_AN_IMAGE, "not an image (its first bytes match no image format)",
                name)  # fmt: skip


# ----------------------------------------------------------------------------- decoding



def _reduce_jpeg(im: Image.Image, fmt: str, limits: DecodeLimits) -> bool:
    """Have libjpeg decode a JPEG over the pixel cap at the largest DCT scale that fits
    under it (`Image.draft`: nothing is decoded yet). What still does not fit, or a JPEG
    draft cannot scale, is left for `_check_header` to refuse."""
    width, height = im.size
    if fmt != "JPEG" or not limits.reduce_jpeg or width * height <= limits.max_pixels:
        return False
    for scale in (2, 4, 8):
        if -(-width // scale) * -(-height // scale) <= limits.max_pixels:
            if min(width, height) >= scale:  # draft asks for at least this size
                im.draft(im.mode, (width // scale, height // scale))
            return im.size != (width, height)
    return False


def _check_header(im: Image.Image, limits: DecodeLimits, name: str | None) -> None:
    width, height = im.size
    if width * height > limits.max_pixels:
        raise _bomb(width, height, width * height, limits.max_pixels, name,
                    limits.pixels_from)
    if min(width, height) < limits.min_side:
        raise _fail(Problem.TOO_SMALL, f"image is {width}×{height}, a side is below the "
                    f"minimum of {limits.min_side} pixels", name)  # fmt: skip
    if im.mode == "LAB":  # would need colour management to become RGB
        raise _fail(Problem.UNSUPPORTED_FORMAT, "CIE L*a*b* images are not supported", name)


def _guarded(data: bytes, fmt: str, name: str | None, limits: DecodeLimits, work: Any) -> Any:
    """Run `work(stream)` under Pillow with every failure mapped onto a `Problem`."""
    stream = io.BytesIO(data)
    ceiling = Image.MAX_IMAGE_PIXELS or 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        bomb = "error" if ceiling and limits.max_pixels <= ceiling else "ignore"
        warnings.simplefilter(bomb, Image.DecompressionBombWarning)
        try:
            return work(stream)
        except (ImageDecodeError, MemoryError):
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _pillow_bomb(exc, data, fmt, limits.max_pixels, ceiling, name,
                               limits.pixels_from) from exc
        except Exception as exc:
            cause: BaseException = exc
            exhausted = not stream.closed and stream.tell() >= len(data)
            if isinstance(exc, Image.UnidentifiedImageError):  # Pillow swallowed the cause
                stream = io.BytesIO(data)
                try:
                    Image.OPEN[fmt][0](stream, "")
                except Exception as inner:
                    cause, exhausted = inner, stream.tell() >= len(data)
            problem = _classify(cause, data, fmt, exhausted)
            what = "data ends early" if problem is Problem.TRUNCATED else "cannot be decoded"
            detail = f"{type(cause).__name__}: {cause}".rstrip(": ")
            raise _fail(problem, f"{fmt} {what} ({detail})", name) from exc


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}  # fmt: skip
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def _orientation(im: Image.Image) -> int:
    # the base-class getexif never triggers a PNG load, so probing stays header-only
    try:
        value = Image.Image.getexif(im).get(0x0112, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _info(im: Image.Image, fmt: str, orientation: int, reduced: bool = False) -> ImageInfo:
    mode, (width, height) = im.mode, im.size
    n_frames = int(getattr(im, "n_frames", 1) or 1)
    flags = {
        "cmyk": mode == "CMYK", "16bit": mode in _HIGH_BIT_MODES, "palette": mode in ("P", "PA"),
        "alpha": mode in _ALPHA_MODES or im.info.get("transparency") is not None,
        "exif_rotated": orientation != 1, "multi_frame": n_frames > 1, "float": mode == "F",
        "bilevel": mode == "1", "reduced": reduced,
    }  # fmt: skip
    if orientation >= 5:
        width, height = height, width
    notes = tuple(note for note in NOTE_VOCABULARY if flags[note])
    return ImageInfo(fmt, mode, width, height, n_frames, notes)


def _high_bit_to_l(im: Image.Image) -> Image.Image:
    values = np.asarray(im)
    if im.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            values = (values - low) / (high - low) if high > low else values * 0.0
        return Image.fromarray(np.rint(values * 255.0).clip(0, 255).astype(np.uint8))
    wide = values.astype(np.int64).clip(0, None)
    top = int(wide.max()) if wide.size else 0
    # round(v * 255 / 65535) == round(v / 257), and 257 is odd: no ties to break
    eight = (wide + 128) // 257 if top <= 65535 else (wide * 255 + top // 2) // top
    out = Image.fromarray(eight.astype(np.uint8))
    trns = im.info.get("transparency")
    if isinstance(trns, int):
        out.putalpha(Image.fromarray(np.where(values == trns, 0, 255).astype(np.uint8)))
    return out


def _normalise(im: Image.Image, mode: str, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> "RGB" or "L", compositing transparency over `background`."""
    if im.mode in _HIGH_BIT_MODES or im.mode == "F":
        im = _high_bit_to_l(im)
    elif im.mode == "La":
        im = im.convert("LA")
    if im.mode in _ALPHA_MODES or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, background)
        im.paste(rgba, mask=rgba)
    if mode == "L" and im.mode not in ("RGB", "L"):
        im = im.convert("RGB")  # luma from the normalised colours, e.g. for CMYK
    return im if im.mode == mode else im.convert(mode)


def _plain_png(data: bytes, mode: str, limits: DecodeLimits,
               background: tuple[int, int, int]) -> DecodedImage | None:
    """A plain PNG decoded without `Image.open` (see the module docstring), or None for
    the full path. Never raises for any bytes: every doubt is a None."""
    layout = plain_png_layout(data)
    if layout is None:
        return None
    (width, height, _depth, colour, *_rest), idat = layout
    ceiling = min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)
    if min(width, height) < limits.min_side or width * height > ceiling:
        return None
    source_mode = PLAIN_PNG_MODES[colour]
    view = memoryview(data)
    pixels = b"".join(view[start:stop - 4] for start, stop in idat)
    try:
        im = Image.frombytes(source_mode, (width, height), pixels, "zip", source_mode)
        array = np.array(_normalise(im, mode, background), dtype=np.uint8)
    except Exception:  # damaged pixel data: the full path says how, in its words
        return None
    info = ImageInfo("PNG", source_mode, width, height, 1, ())
    return DecodedImage(array[:, :, None] if array.ndim == 2 else array, info)


def decode_image(
    source: Source,
    *,
    mode: Literal["RGB", "L"] = "RGB",
    limits: DecodeLimits = _DEFAULT_LIMITS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> DecodedImage:
    """Decode untrusted bytes into a uint8 (H, W, C) array, or fail with a `Problem`.

    The module docstring lists every limit and normalisation applied, and why.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    if len(background) != 3 or not all(0 <= int(c) <= 255 for c in background):
        raise ValueError(f"background must be three values in 0..255, not {background!r}")
    fill = (int(background[0]), int(background[1]), int(background[2]))
    data, name = _read_source(source, limits)
    fmt = _sniff_or_fail(data, name)
    if fmt == "PNG":
        plain = _plain_png(data, mode, limits, fill)
        if plain is not None:
            return plain
        data = _tame_png(data)

    def work(stream: io.BytesIO) -> DecodedImage:
        with Image.open(stream, formats=(fmt,)) as im:
            reduced = _reduce_jpeg(im, fmt, limits)
            _check_header(im, limits, name)
            info = _info(im, fmt, 1, reduced)  # before load: what probe_image reports
            im.load()
            orientation = _orientation(im)  # after load: a PNG's late eXIf chunk is read
            out = _normalise(im, mode, fill)
        if orientation != 1:
            out = out.transpose(_TRANSPOSE[orientation])
            notes = tuple(n for n in NOTE_VOCABULARY if n in info.notes or n == "exif_rotated")
            info = dataclasses.replace(info, width=out.width, height=out.height, notes=notes)
        array = np.array(out, dtype=np.uint8)  # a writable copy the caller owns
        return DecodedImage(array[:, :, None] if array.ndim == 2 else array, info)

    return _guarded(data, fmt, name, limits, work)


def probe_image(source: Source, *, limits: DecodeLimits = _DEFAULT_LIMITS) -> ImageInfo:
    """Header-only: validates magic bytes, byte size, dimensions vs limits, without decoding pixels.

    Cheap enough to run on every file of a folder; a file that probes fine can still fail
    `decode_image` when its pixel data is damaged.
    """
    data, name = _read_source(source, limits)
    fmt = _sniff_or_fail(data, name)
    if fmt == "PNG":
        data = _tame_png(data)

    def work(stream: io.BytesIO) -> ImageInfo:
        with Image.open(stream, formats=(fmt,)) as im:
            reduced = _reduce_jpeg(im, fmt, limits)
            _check_header(im, limits, name)
            return _info(im, fmt, _orientation(im), reduced)

    return _guarded(data, fmt, name, limits, work)

