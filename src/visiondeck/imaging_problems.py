"""How an image fails: the `Problem` kinds, `ImageDecodeError`, and telling them apart.

Every failure of the decoder (imaging.py) is an `ImageDecodeError` whose `problem` names
its kind, with a hint that says what to do; this module is that vocabulary and the rules
that pick a kind for a failure, kept apart from the decoder so that the wording and the
classification live in one place. It imports nothing of imaging.py.

Classification: `EOFError`, messages about truncation/end of data, and a missing end marker
or declared length (JPEG EOI, PNG IEND, GIF trailer, WebP RIFF size, BMP file size; for
TIFF: a parse error after all input was consumed) are `TRUNCATED`; every other failure
(SyntaxError, OSError, ValueError, zlib/struct errors, ...) is `CORRUPT`.
"""

from __future__ import annotations

import math
import re
import struct
from enum import StrEnum
from typing import Any

from visiondeck.errors import DataError

__all__ = ["ImageDecodeError", "Problem", "bomb", "classify", "fail", "pillow_bomb"]


class Problem(StrEnum):
    ZERO_BYTES = "zero_bytes"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT = "corrupt"
    TRUNCATED = "truncated"
    TOO_SMALL = "too_small"
    BOMB = "bomb"
    TOO_LARGE = "too_large"


_HINTS = {
    Problem.ZERO_BYTES: "the file is empty; copy or export it again, or remove it",
    Problem.NOT_AN_IMAGE: "only JPEG, PNG, GIF, BMP, TIFF and WebP are read (whatever the file "
    "name says); remove the file or move it out of the image folder",
    Problem.UNSUPPORTED_FORMAT: "convert it to PNG or JPEG, or remove it",
    Problem.CORRUPT: "the file is damaged; export or download it again, or remove it",
    Problem.TRUNCATED: "the file ends early (an interrupted copy or download?); copy it again "
    "or remove it",
    Problem.TOO_SMALL: "remove the image, or lower the limit (data.min_size)",
    Problem.BOMB: "downscale the image, or raise the limit (data.max_pixels) if it is genuine",
    Problem.TOO_LARGE: "shrink the file, or raise the byte limit (e.g. the server's upload limit)",
}


class ImageDecodeError(DataError):
    """Bytes that cannot become a picture; `problem` lets callers count and route by kind.

    A `DataError` (exit code 4); `hint` defaults to a fix for the `problem`.
    """

    exit_code = 4

    def __init__(self, problem: Problem, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or _HINTS[problem])
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        # the keyword-only hint defeats default exception pickling (process-pool scans)
        return (_rebuild_error, (self.problem, self.message, self.hint))


def _rebuild_error(problem: Problem, message: str, hint: str | None) -> ImageDecodeError:
    return ImageDecodeError(problem, message, hint=hint)


def fail(problem: Problem, message: str, name: str | None) -> ImageDecodeError:
    """The error for `problem`, its message prefixed with the file's name when known."""
    return ImageDecodeError(problem, f"{name}: {message}" if name else message)


def bomb(width: int, height: int, pixels: int, cap: int, name: str | None,
         pixels_from: str | None = None) -> ImageDecodeError:
    """A BOMB error; with `pixels_from` (a served model's cap) the hint names a size to send."""
    size = f"{width:,}×{height:,} = " if width * height == pixels else ""
    if pixels_from is None:
        return fail(Problem.BOMB, f"image is {size}{pixels:,} pixels, above the limit of "
                    f"{cap:,}; raise the limit (data.max_pixels) if this is a genuine image",
                    name)  # fmt: skip
    side = math.isqrt(cap)
    message = f"image is {size}{pixels:,} pixels, above the limit of {cap:,} ({pixels_from})"
    return ImageDecodeError(Problem.BOMB, f"{name}: {message}" if name else message,
                            hint=f"downscale it to at most {cap:,} pixels (e.g. {side}×{side}) "
                                 "and send it again")  # fmt: skip


_PIXELS_IN_MESSAGE = re.compile(r"\((\d+) pixels\)")
_DIMS_AT = {"PNG": (16, ">II"), "GIF": (6, "<HH"), "BMP": (18, "<ii")}  # for bomb messages


def pillow_bomb(exc: BaseException, data: bytes, fmt: str, cap: int, ceiling: int,
                name: str | None, pixels_from: str | None) -> ImageDecodeError:
    """The BOMB error for Pillow's own `DecompressionBomb*`: the pixel count from its
    message, the size from the header where the format keeps it at a fixed place. Over our
    `cap` it is our limit's refusal, else Pillow's hard ceiling (twice `ceiling`)."""
    found = _PIXELS_IN_MESSAGE.search(str(exc))
    pixels = int(found.group(1)) if found else 0
    offset, layout = _DIMS_AT.get(fmt, (len(data), ""))
    dims = struct.unpack_from(layout, data, offset) if len(data) >= offset + 8 else (0, 0)
    if pixels > cap:
        return bomb(*dims, pixels, cap, name, pixels_from)
    return bomb(*dims, pixels, 2 * ceiling, name)


_TRUNCATION = re.compile(r"truncat|unexpected end|premature end|end of (file|data|stream)"
                         r"|not enough data|ran out of|\beof\b|incomplete", re.I)  # fmt: skip


def _le(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _looks_cut(data: bytes, fmt: str) -> bool | None:
    """Whether the format's end marker or declared length is missing; None: cannot tell."""
    end = data.rstrip(b"\0")
    return {
        "JPEG": not end.endswith(b"\xff\xd9"),
        "PNG": b"IEND" not in data[-16:],
        "GIF": not end.endswith(b";"),
        "WEBP": len(data) < 8 + _le(data[4:8]),
        "BMP": len(data) < _le(data[2:6]),
    }.get(fmt)


def classify(exc: BaseException, data: bytes, fmt: str, exhausted: bool) -> Problem:
    """TRUNCATED or CORRUPT for a failure of Pillow on `data` (the module docstring's
    rules); `exhausted`: the parser had consumed all of the input when it failed."""
    if isinstance(exc, EOFError) or _TRUNCATION.search(str(exc)):
        return Problem.TRUNCATED
    cut = _looks_cut(data, fmt)
    if cut is None:  # a parser that ran off the end complains about a short struct/chunk
        cut = exhausted and isinstance(exc, SyntaxError | struct.error | IndexError)
    return Problem.TRUNCATED if cut else Problem.CORRUPT
