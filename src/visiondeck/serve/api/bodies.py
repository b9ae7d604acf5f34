"""Getting image bytes out of a request: bounded, timed, and parsed by well-kept parsers.

Every request body reaches the app through `limited_receive`, the one place bytes are
counted and timed: `BodyLimitMiddleware` wraps every route with it and the `/predict` fast
path (serve/api/fast_predict.py) calls it directly. It refuses with 413 a body whose
`Content-Length` is over its route's limit before reading a byte, and as soon as the bytes
received pass the limit when the client sent none (chunked); and with 408 a body still
incomplete when its deadline passes, so a client trickling a byte every few seconds holds
a socket for at most `body_timeout_s`, never a place in the inference queue (requests are
admitted to inference only once their body is in: see `Engine.admit`).

`read_images` then turns the body into uploads:
- multipart/form-data goes through python-multipart's streaming `MultipartParser` (the
  parser Starlette uses), chunk by chunk as the body arrives: linear time, headers bounded
  by the parser (count and size per part), each file bounded by `max_file_bytes` while it
  streams, fields other than the image and `label` never kept;
- JSON `{"image": "<base64>"}` / `{"images": [...]}` through `rules.parse_json_body`;
- anything else `rules.body_kind` accepts is the raw image bytes.
The decoder then sniffs the type from the bytes themselves (visiondeck.imaging).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visiondeck.serve.api.rules import parse_json_body, require_body_kind
from visiondeck.serve.errors import PayloadTooLarge, RequestTimeout, ServeError
from visiondeck.serve.settings import ServeSettings

__all__ = ["FILE_FIELDS", "MAX_LABEL", "BodyLimitMiddleware", "BodyRules", "Upload",
           "body_rules", "content_length", "limited_receive", "read_images", "route_path"]

FILE_FIELDS = frozenset({"file", "image", "files", "images"})
LABEL_FIELD = "label"
MAX_LABEL = 200  # characters kept of a client's label
MAX_FORM_PARTS = 16  # parts besides the images (a form with more is refused)
MAX_PART_HEADERS = 8  # headers per part, and bytes per header line: python-multipart's
MAX_PART_HEADER_BYTES = 4096  # own bounds, set explicitly so they can't loosen on upgrade
INLINE_JSON_BYTES = 64 * 1024  # JSON bodies up to this are parsed on the event loop


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


@dataclass(frozen=True)
class BodyRules:
    """What one route accepts: whole-body bytes, images, bytes per image, seconds to send."""

    limit: int
    max_files: int
    max_file_bytes: int
    timeout_s: float


def body_rules(settings: ServeSettings, path: str) -> BodyRules:
    """The rules of the route at `path`, from the settings (the one place they are derived)."""
    return BodyRules(limit=settings.body_limit(path), max_files=settings.files_for(path),
                     max_file_bytes=settings.max_upload_bytes,
                     timeout_s=settings.body_timeout_s)


def route_path(scope: Scope) -> str:
    """The path as routes see it (without the prefix of a `--root-path` deployment)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


# ----------------------------------------------------------------------------- receiving


def content_length(scope: Scope) -> int | None:
    """The request's declared `Content-Length`, None when absent or not a plain number.

    Digits only and at most 19 of them: `int()` of an attacker's 5,000-digit header would
    raise (Python's digit limit) or cost quadratic time.
    """
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            text = value.strip()
            if 0 < len(text) <= 19 and text.isdigit():
                return int(text)
            return None
    return None


def _too_large(size: int, limit: int, streamed: bool) -> PayloadTooLarge:
    what = f"more than {limit:,} bytes" if streamed else f"{size:,} bytes"
    return PayloadTooLarge(f"the request body is {what}; the limit is {limit:,} bytes",
                           hint="send a smaller image (or fewer images per request)")


def limited_receive(receive: Receive, limit: int, declared: int | None,
                    timeout_s: float) -> Receive:
    """`receive`, refusing (413) past `limit` bytes and (408) past `timeout_s` seconds.

    A declared `Content-Length` over the limit is refused on the first call, before a byte
    is read. The deadline applies until the last body message has arrived; afterwards
    (an app waiting for the client to disconnect) the call is passed through untouched.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen = 0
    done = False

    async def bounded() -> Message:
        nonlocal seen, done
        if declared is not None and declared > limit:
            raise _too_large(declared, limit, False)
        if done:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {timeout_s:g} s",
                hint="send the whole body promptly (the server's body_timeout_s)") from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(seen, limit, declared is None)
            done = not message.get("more_body", False)
        else:
            done = True
        return message

    return bounded


class BodyLimitMiddleware:
    """Every route's body through `limited_receive`; the refusal answered here when it is
    raised outside the app's exception handlers (before the route runs)."""

    def __init__(self, app: ASGIApp, settings: ServeSettings,
                 on_refuse: Callable[[ServeError], None] | None = None) -> None:
        self.app = app
        self.settings = settings
        self.on_refuse = on_refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bounded = limited_receive(receive, self.settings.body_limit(route_path(scope)),
                                  content_length(scope), self.settings.body_timeout_s)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded, tracking_send)
        except (PayloadTooLarge, RequestTimeout) as exc:
            if started:
                raise
            if self.on_refuse is not None:
                self.on_refuse(exc)
            body = json.dumps(exc.body()).encode()
            await send({"type": "http.response.start", "status": exc.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- images


async def read_images(receive: Receive, content_type: str, query_label: str | None,
                      rules: BodyRules) -> tuple[list[Upload], str | None]:
    """The images of a request and the client's optional label (the form's or JSON's
    `label`, else the query's), read from `receive` (already bounded by `limited_receive`).
    """
    kind = require_body_kind(content_type)  # 415 before a byte is read
    sink: _Form | _Whole = _Form(content_type, rules) if kind == "multipart" else _Whole()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServeError("the client went away before sending the whole body",
                             code="disconnected", status=400)
        chunk = message.get("body", b"")
        if chunk:
            sink.feed(chunk)
        if not message.get("more_body", False):
            break
    if kind == "multipart":
        assert isinstance(sink, _Form)
        uploads, label = sink.finish()
    elif kind == "json":
        body = sink.body()
        # parsing and base64-decoding megabytes takes milliseconds: off the event loop
        uploads, label = (_from_json(body, rules) if len(body) <= INLINE_JSON_BYTES
                          else await asyncio.to_thread(_from_json, body, rules))
    else:
        body = sink.body()
        uploads, label = ([Upload("body", _check_size(body, rules.max_file_bytes, "body"))]
                          if body else []), None
    if not uploads:
        raise ServeError("the request holds no image", code="no_image", status=422,
                         hint="curl -F 'image=@cat.jpg' URL, or send the bytes as the body")
    label = label if label is not None else query_label
    if label is not None:
        label = label.strip()[:MAX_LABEL] or None
    return uploads, label


class _Whole:
    """A raw or JSON body, kept whole (both need all of it; the limit bounds it)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class _Form:
    """A multipart body fed to python-multipart as it arrives; keeps only image parts
    (bounded each) and the label (bounded), counts everything else."""

    def __init__(self, content_type: str, rules: BodyRules) -> None:
        _kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary", b"")
        if not 0 < len(boundary) <= 70:  # RFC 2046: 1 to 70 characters
            raise ServeError("the multipart body has no valid boundary", code="bad_multipart",
                             status=400, hint="let the HTTP client write the Content-Type")
        self.rules = rules
        self.uploads: list[Upload] = []
        self.label: str | None = None
        self.parts = 0
        self.ended = False
        self._field = bytearray()
        self._value = bytearray()
        self._disposition: bytes | None = None
        self._keep: str | None = None  # "file" / "label" / None for the current part
        self._name = ""
        self._data = bytearray()
        self.parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        }, max_header_count=MAX_PART_HEADERS, max_header_size=MAX_PART_HEADER_BYTES)

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as exc:
            raise ServeError(f"cannot parse the multipart body: {str(exc)[:200]}",
                             code="bad_multipart", status=400) from None

    def finish(self) -> tuple[list[Upload], str | None]:
        if not self.ended:
            raise ServeError("the multipart body ends before its closing boundary",
                             code="bad_multipart", status=400,
                             hint="send the whole form (the last line is --BOUNDARY--)")
        return self.uploads, self.label

    # python-multipart's callbacks, in the order it calls them for each part

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.rules.max_files + MAX_FORM_PARTS:
            raise ServeError(f"the form has more than {self.parts - 1} parts",
                             code="bad_multipart", status=400)
        self._disposition = None
        self._keep = None
        self._data = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._field).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        if self._disposition is None:
            raise ServeError("a form part has no Content-Disposition header",
                             code="bad_multipart", status=400)
        kind, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            raise ServeError("a form part is not form-data with a name", code="bad_multipart",
                             status=400)
        field = name.decode("latin-1")
        filename = options.get(b"filename")
        if filename is not None and field in FILE_FIELDS:
            if len(self.uploads) >= self.rules.max_files:
                raise ServeError(f"more than {self.rules.max_files} images in one request",
                                 code="too_many_files", status=413,
                                 hint="send fewer images per request")
            self._keep = "file"
            self._name = filename.decode("utf-8", "replace")[:255] or field
        elif filename is None and field == LABEL_FIELD:
            self._keep = "label"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._keep == "file":
            if len(self._data) + (end - start) > self.rules.max_file_bytes:
                raise PayloadTooLarge(f"{self._name} is more than "
                                      f"{self.rules.max_file_bytes:,} bytes; that is the limit",
                                      hint="send a smaller image")
            self._data += data[start:end]
        elif self._keep == "label" and len(self._data) < 4 * MAX_LABEL:
            self._data += data[start:end][: 4 * MAX_LABEL - len(self._data)]

    def _part_end(self) -> None:
        if self._keep == "file":
            self.uploads.append(Upload(self._name, bytes(self._data)))
        elif self._keep == "label":
            self.label = bytes(self._data).decode("utf-8", "ignore")
        self._data = bytearray()

    def _end(self) -> None:
        self.ended = True


def _check_size(data: bytes, max_bytes: int, name: str) -> bytes:
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{name} is {len(data):,} bytes; the limit is {max_bytes:,}",
                              hint="send a smaller image")
    return data


def _from_json(body: bytes, rules: BodyRules) -> tuple[list[Upload], str | None]:
    payload: Any = parse_json_body(body)
    if not isinstance(payload, dict):
        raise ServeError("the JSON body must be an object", code="bad_json", status=422,
                         hint='send {"image": "<base64>"} or {"images": ["<base64>", ...]}')
    items = payload.get("images")
    if items is None:
        items = [] if payload.get("image") is None else [payload["image"]]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ServeError("images must be base64 strings", code="bad_json", status=422)
    if len(items) > rules.max_files:
        raise ServeError(f"{len(items)} images; at most {rules.max_files} per request",
                         code="too_many_files", status=413)
    uploads = [Upload(f"image{i}", _check_size(_b64(text), rules.max_file_bytes, f"image{i}"))
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
