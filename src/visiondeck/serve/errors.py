"""Errors of the inference service, each with the HTTP status the API answers with.

Every user-caused failure becomes a JSON body `{"error": code, "detail": message, "hint":
hint}` with a 4xx status (503 for "try again later"), so a client can route on `error`
and a person can read `detail`; nothing a client sends can produce a 500.
"""

from __future__ import annotations

from typing import Any

from visiondeck.errors import VisionDeckError
from visiondeck.export.errors import BundleError
from visiondeck.imaging import ImageDecodeError, Problem

__all__ = [
    "INTERNAL_ERROR", "Forbidden", "ModelUnavailable", "Overloaded", "PayloadTooLarge",
    "RateLimited", "RequestTimeout", "ServeError", "Unauthorized", "UnsupportedMediaType",
    "decode_error_status", "error_answer", "error_body",
]  # fmt: skip


class ServeError(VisionDeckError):
    """A request the service refuses; `status` and `code` shape the HTTP answer."""

    exit_code = 8
    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, hint=hint)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.hint)


def error_body(code: str, detail: Any, hint: str | None = None) -> dict[str, Any]:
    """The JSON body of every refusal, whichever path or handler answers it."""
    return {"error": code, "detail": detail, "hint": hint}


class PayloadTooLarge(ServeError):
    status, code = 413, "too_large"


class RequestTimeout(ServeError):
    """A body that did not arrive in time (a slow or stalled client); the connection is
    closed with the answer, since the rest of the body is never read."""

    status, code = 408, "body_timeout"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, headers={"Connection": "close"})


class UnsupportedMediaType(ServeError):
    status, code = 415, "unsupported_media_type"


class Unauthorized(ServeError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServeError):
    status, code = 403, "forbidden"


class RateLimited(ServeError):
    status, code = 429, "rate_limited"

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, int(-(-retry_after // 1)))
        super().__init__(f"too many requests; retry in {seconds} s",
                         hint="slow down, or ask for a higher limit",
                         headers={"Retry-After": str(seconds)})


class Overloaded(ServeError):
    status, code = 503, "overloaded"

    def __init__(self, message: str = "the server is at capacity") -> None:
        super().__init__(message, hint="retry shortly; add replicas for more capacity",
                         headers={"Retry-After": "1"})


class ModelUnavailable(ServeError):
    status, code = 503, "model_unavailable"


_DECODE_STATUS = {
    Problem.TOO_LARGE: 413,
    Problem.NOT_AN_IMAGE: 415,
    Problem.UNSUPPORTED_FORMAT: 415,
}


def decode_error_status(exc: ImageDecodeError) -> int:
    """413 for too many bytes, 415 for what is not a supported image, else 422."""
    return _DECODE_STATUS.get(exc.problem, 422)


#: the body of the answer to an unexpected exception (logged, never shown to the client)
INTERNAL_ERROR = error_body("internal", "internal error; it has been logged")


def error_answer(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str] | None] | None:
    """(status, JSON body, headers) of a refusal, or None for an unexpected exception.

    The one mapping from exceptions to answers: the app's exception handlers and the
    /predict fast path (serve/api/fast_predict.py) both answer through it, so a client sees
    the same error whichever path served it. The body's `error` is also the label of the
    errors metric.
    """
    if isinstance(exc, ServeError):
        return exc.status, exc.body(), exc.headers or None
    if isinstance(exc, ImageDecodeError):
        return decode_error_status(exc), error_body(exc.problem.value, exc.message,
                                                    exc.hint), None
    if isinstance(exc, BundleError):
        return 503, error_body("model_unavailable", exc.message, exc.hint), None
    if isinstance(exc, VisionDeckError):
        return 422, error_body("invalid", exc.message, exc.hint), None
    return None
