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
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visiondeck.serve.errors import PayloadTooLarge, ServeError, UnsupportedMediaType

__all__ = ["BodyLimitMiddleware", "Upload", "content_length", "read_uploads", "receive_body",
           "split_multipart", "uploads_from_body"]

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
        declared = content_length(scope)
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


def content_length(scope: Scope) -> int | None:
    """The request's declared `Content-Length`, None when absent or not a number."""
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
    return await uploads_from_body(request.headers.get("content-type", ""),
                                   await request.body(), request.query_params.get("label"),
                                   max_files=max_files, max_bytes=max_bytes)


async def uploads_from_body(content_type_header: str, body: bytes, query_label: str | None, *,
                            max_files: int, max_bytes: int
                            ) -> tuple[list[Upload], str | None]:
    """The images of a request body already read (within its route's size limit), and the
    client's optional label (the form's or JSON's `label`, else the query's)."""
    content_type = content_type_header.split(";")[0].strip().lower()
    label = query_label
    if content_type == "multipart/form-data":
        uploads, form_label = await _from_form(content_type_header, body, max_files, max_bytes)
        label = form_label or label
    elif content_type == "application/json":
        uploads, json_label = _from_json(body, max_files, max_bytes)
        label = json_label or label
    elif content_type.startswith("image/") or content_type in ("application/octet-stream", ""):
        uploads = [Upload("body", _check_size(body, max_bytes, "body"))] if body else []
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


async def receive_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The whole body of an ASGI request, refused (413) past `limit` bytes: at once when
    `Content-Length` declares more, else as soon as the bytes received pass it."""
    if declared is not None and declared > limit:
        raise _too_large(declared, limit, False)
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServeError("the client went away before sending the whole body",
                             code="disconnected", status=400)
        chunk = message.get("body", b"")
        if chunk:
            seen += len(chunk)
            if seen > limit:
                raise _too_large(seen, limit, declared is None)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _check_size(data: bytes, max_bytes: int, name: str) -> bytes:
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{name} is {len(data):,} bytes; the limit is {max_bytes:,}",
                              hint="send a smaller image")
    return data


def _check_count(count: int, max_files: int) -> None:
    if count > max_files:
        raise ServeError(f"{count} images; at most {max_files} per request",
                         code="too_many_files", status=413)


# ----------------------------------------------------------------------------- multipart

MAX_FORM_FIELDS = 16
_BOUNDARY = re.compile(r';\s*boundary\s*=\s*(?:"([^"\\]{1,70})"|([^;\s"]{1,70}))', re.I)
_DISPOSITION = re.compile(
    r'form-data((?:\s*;\s*[\w*.-]+\s*=\s*(?:"[^"\\\r\n]*"|[^;"\s]*))*)\s*;?\s*', re.I)
_PARAM = re.compile(r';\s*([\w*.-]+)\s*=\s*(?:"([^"\\\r\n]*)"|([^;"\s]*))')


@dataclass(frozen=True)
class _Part:
    name: str
    filename: str | None
    data: bytes


def split_multipart(body: bytes, boundary: bytes) -> list[_Part] | None:
    """The parts of a plainly written multipart/form-data body, in one pass over bytes.

    This is the shape every HTTP client library, curl and browser writes: no preamble, CRLF
    line ends, one `Content-Disposition: form-data; name=...` per part, quoted values
    without escapes. Anything else (a preamble, transport padding, escaped quotes, a
    missing closing delimiter, more parts than the form may have) answers None, and the
    request goes through the full streaming parser (python-multipart), which accepts every
    valid body and explains what is wrong with an invalid one.
    """
    delimiter = b"--" + boundary
    if not body.startswith(delimiter + b"\r\n"):
        return None
    separator = b"\r\n" + delimiter
    parts: list[_Part] = []
    position = len(delimiter) + 2
    while True:
        end = body.find(separator, position)
        head_end = body.find(b"\r\n\r\n", position, end)
        if end < 0 or head_end < 0 or len(parts) >= MAX_FORM_FIELDS:
            return None
        name = filename = None
        for line in body[position:head_end].split(b"\r\n"):
            key, colon, value = line.partition(b":")
            if not colon:
                return None
            if key.strip().lower() == b"content-disposition":
                try:
                    text = value.decode("utf-8").strip()
                except UnicodeDecodeError:
                    return None
                if _DISPOSITION.fullmatch(text) is None:
                    return None
                params = {m.group(1).lower(): m.group(2) if m.group(2) is not None
                          else m.group(3) for m in _PARAM.finditer(text)}
                name, filename = params.get("name"), params.get("filename")
        if name is None:
            return None
        parts.append(_Part(name, filename, body[head_end + 4:end]))
        after = end + len(separator)
        closing = body[after:after + 2]
        if closing == b"--":
            return parts
        if closing != b"\r\n":
            return None
        position = after + 2


async def _from_form(content_type_header: str, body: bytes, max_files: int, max_bytes: int
                     ) -> tuple[list[Upload], str | None]:
    match = _BOUNDARY.search(content_type_header)
    parts = None if match is None else split_multipart(
        body, (match.group(1) or match.group(2)).encode("latin-1"))
    if parts is None or sum(p.filename is not None for p in parts) > max_files + 1:
        parts = await _parse_form_fully(content_type_header, body, max_files)
    uploads: list[Upload] = []
    label = None
    for part in parts:
        if part.filename is not None:
            if part.name in FILE_FIELDS:
                name = part.filename or part.name
                uploads.append(Upload(name, _check_size(part.data, max_bytes, name)))
        elif part.name == "label":
            try:
                label = part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise ServeError("the label is not UTF-8 text", code="bad_multipart",
                                 status=400) from None
    _check_count(len(uploads), max_files)
    return uploads, label


async def _parse_form_fully(content_type_header: str, body: bytes, max_files: int
                            ) -> list[_Part]:
    """Starlette's streaming parser (python-multipart) over the body already read."""
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(Headers({"content-type": content_type_header}), stream(),
                             max_files=max_files + 1, max_fields=MAX_FORM_FIELDS)  # +1: our 413
    try:
        form = await parser.parse()
    except ServeError:
        raise
    except Exception as exc:  # malformed multipart, too many parts
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        raise ServeError(f"cannot parse the multipart body: {detail}", code="bad_multipart",
                         status=400) from None
    try:
        parts = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                parts.append(_Part(key, value.filename or "", await value.read()))
            else:
                parts.append(_Part(key, None, str(value).encode("utf-8")))
        return parts
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
    _check_count(len(items), max_files)
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
