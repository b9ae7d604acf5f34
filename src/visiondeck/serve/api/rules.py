"""The one home of each rule a request is held to, for every path that reads one.

The FastAPI routes, the `/predict` fast path (serve/api/fast_predict.py), the settings and
the AWS Lambda handler (deploy/lambda/handler.py) all call these: a bound changed here
changes everywhere, and no path can drift from another. Nothing here imports a web
framework, so the Lambda image (no FastAPI) uses the same rules.

Every function takes hostile input and costs time linear in it: lengths are checked before
numbers are converted, JSON nesting is bounded by the parser's own recursion guard.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from visiondeck.serve.errors import ServeError, UnsupportedMediaType

__all__ = ["TOP_K_MAX", "TOP_K_MIN", "BodyKind", "body_kind", "parse_json_body",
           "parse_top_k", "require_body_kind"]

#: classes a client may ask for per prediction (`?top_k=`, `VISIONDECK_TOP_K`)
TOP_K_MIN, TOP_K_MAX = 1, 100
_TOP_K_DIGITS = len(str(TOP_K_MAX))

BodyKind = Literal["multipart", "json", "raw"]


def parse_top_k(value: str | int | None) -> int | None:
    """`?top_k=` as an int in [TOP_K_MIN, TOP_K_MAX]; None when absent; 422 otherwise.

    The length is checked before `int()`: Python refuses to convert more than 4,300 digits
    with a ValueError, and a 100,000-digit string would cost quadratic time before that.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad_top_k(str(value))
    if isinstance(value, int):
        number = value
    else:
        text = value.strip()
        if not (0 < len(text) <= _TOP_K_DIGITS and text.isascii() and text.isdigit()):
            raise _bad_top_k(text)
        number = int(text)
    if not TOP_K_MIN <= number <= TOP_K_MAX:
        raise _bad_top_k(str(number))
    return number


def _bad_top_k(text: str) -> ServeError:
    shown = text if len(text) <= 20 else text[:20] + "…"
    return ServeError(f"top_k must be a whole number from {TOP_K_MIN} to {TOP_K_MAX}, "
                      f"not {shown!r}", code="invalid_request", status=422,
                      hint=f"e.g. ?top_k=3 (at most {TOP_K_MAX})")


def body_kind(content_type: str) -> BodyKind | None:
    """How a body with this `Content-Type` holds its images; None when it cannot."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return "multipart"
    if kind == "application/json":
        return "json"
    if kind in ("application/octet-stream", "") or kind.startswith("image/"):
        return "raw"
    return None


def require_body_kind(content_type: str) -> BodyKind:
    """`body_kind`, or a 415 that says what to send instead."""
    kind = body_kind(content_type)
    if kind is None:
        shown = content_type.split(";", 1)[0].strip()[:100]
        raise UnsupportedMediaType(
            f"cannot read images from a {shown!r} body",
            hint="send multipart/form-data (field 'file' or 'image'), the raw image bytes, "
                 "or JSON {\"image\": \"<base64>\"}")
    return kind


def parse_json_body(body: bytes | str) -> Any:
    """A JSON request body, or a 400: invalid text, invalid UTF-8 and nesting too deep for
    the parser (`RecursionError`, e.g. 100,000 `[`) are the client's fault, never a 500."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ServeError("the JSON body is not valid JSON (or is nested too deeply)",
                         code="bad_json", status=400,
                         hint='send {"image": "<base64>"}') from None
