"""Getting image bytes out of a request safely: size limits first, then the three encodings.

Sizes are enforced before anything is decoded, at two points:
1. `BodyLimitMiddleware` refuses a request whose `Content-Length` exceeds the route's limit
   without reading its body, and counts the bytes of bodies without one (chunked), failing
   with 413 as soon as the limit is passed - the rest is never read;
2. each image is checked against `max_upload_bytes` once its part is extracted.
Only then does the decoder see bytes (whose type it sniffs from the bytes themselves).

Accepted encodings: multipart form (field `file`, or `image` as the seeds' clients send;
`files`/`images` for batches; an optional `label` field), a raw body with an image or
octet-stream content type, or JSON `{"image": "<base64>"}` / `{"images": [...]}`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visiondeck.serve.errors import PayloadTooLarge, ServeError, UnsupportedMediaType

__all__ = ["BodyLimitMiddleware", "Upload", "read_uploads"]

FILE_FIELDS = ("file", "image", "files", "images")
MAX_LABEL = 200


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


class BodyLimitMiddleware:
    """413 for bodies over the limit of their route, before and while reading them."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int | None],
                 on_refuse: Callable[[], None] | None = None) -> None:
        self.app = app
        self.limit_for = limit_for
        self.on_refuse = on_refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(send, declared, limit)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(seen, limit, declared is None)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge as exc:
            if started:
                raise
            await self._respond(send, exc)

    async def _refuse(self, send: Send, size: int, limit: int) -> None:
        await self._respond(send, _too_large(size, limit, False))

    async def _respond(self, send: Send, exc: PayloadTooLarge) -> None:
        if self.on_refuse is not None:
            self.on_refuse()
        body = json.dumps(exc.body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(size: int, limit: int, streamed: bool) -> PayloadTooLarge:
    what = f"more than {limit:,} bytes" if streamed else f"{size:,} bytes"
    return PayloadTooLarge(f"the request body is {what}; the limit is {limit:,} bytes",
                           hint="send a smaller image (or fewer images per request)")


async def read_uploads(request: Request, *, max_files: int, max_bytes: int
                       ) -> tuple[list[Upload], str | None]:
    """The images of a request, and the client's optional label."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    label = request.query_params.get("label")
    if content_type == "multipart/form-data":
        uploads, form_label = await _from_form(request, max_files, max_bytes)
        label = form_label or label
    elif content_type == "application/json":
        uploads, json_label = _from_json(await request.body(), max_files, max_bytes)
        label = json_label or label
    elif content_type.startswith("image/") or content_type in ("application/octet-stream", ""):
        data = await request.body()
        uploads = [Upload("body", _check_size(data, max_bytes, "body"))] if data else []
    else:
        raise UnsupportedMediaType(
            f"cannot read images from a {content_type!r} body",
            hint="send multipart/form-data (field 'file' or 'image'), the raw image bytes, "
                 "or JSON {\"image\": \"<base64>\"}")
    if not uploads:
        raise ServeError("the request holds no image", code="no_image", status=422,
                         hint="curl -F 'image=@cat.jpg' URL, or send the bytes as the body")
    if label is not None:
        label = label.strip()[:MAX_LABEL] or None
    return uploads, label


def _check_size(data: bytes, max_bytes: int, name: str) -> bytes:
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{name} is {len(data):,} bytes; the limit is {max_bytes:,}",
                              hint="send a smaller image")
    return data


async def _from_form(request: Request, max_files: int, max_bytes: int
                     ) -> tuple[list[Upload], str | None]:
    try:
        form = await request.form(max_files=max_files + 1, max_fields=16)  # +1: our 413
    except ServeError:
        raise
    except Exception as exc:  # malformed multipart, too many parts
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        raise ServeError(f"cannot parse the multipart body: {detail}", code="bad_multipart",
                         status=400) from None
    try:
        uploads: list[Upload] = []
        label = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key in FILE_FIELDS:
                    data = await value.read(max_bytes + 1)
                    name = value.filename or key
                    uploads.append(Upload(name, _check_size(data, max_bytes, name)))
            elif key == "label":
                label = str(value)
        if len(uploads) > max_files:
            raise ServeError(f"{len(uploads)} images; at most {max_files} per request",
                             code="too_many_files", status=413)
        return uploads, label
    finally:
        await form.close()


def _from_json(body: bytes, max_files: int, max_bytes: int) -> tuple[list[Upload], str | None]:
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ServeError("the JSON body is not valid JSON", code="bad_json", status=400) from None
    if not isinstance(payload, dict):
        raise ServeError("the JSON body must be an object", code="bad_json", status=422,
                         hint='send {"image": "<base64>"} or {"images": ["<base64>", ...]}')
    items = payload.get("images")
    if items is None:
        items = [] if payload.get("image") is None else [payload["image"]]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ServeError("images must be base64 strings", code="bad_json", status=422)
    if len(items) > max_files:
        raise ServeError(f"{len(items)} images; at most {max_files} per request",
                         code="too_many_files", status=413)
    uploads = [Upload(f"image{i}", _check_size(_b64(text), max_bytes, f"image{i}"))
               for i, text in enumerate(items)]
    label = payload.get("label")
    return uploads, label if isinstance(label, str) else None


def _b64(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]  # a data URL from a browser
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError("an image is not valid base64", code="bad_base64", status=422) from None
