"""`POST /predict` answered in front of the framework: the service's hot path, kept lean.

Profiling the service under load (py-spy, FastAPI 0.16x, 28 px images) showed that the
event loop, not inference, bounds throughput, and that a third of the loop's time went to
layers a prediction does not need: eight ASGI middlewares (Starlette's error and
exception layers, FastAPI's telemetry and body-limit layers, ours), route matching,
dependency resolution and response validation. `PredictLane` is the outermost ASGI layer
(behind CORS only, in front of FastAPI's own layers: see `app._Service`): it answers
`POST /predict` itself with exactly the steps the FastAPI route runs - the same functions
for credentials and rate limits (`deps.check_caller`), body size (`uploads.receive_body`),
parsing, prediction and recording (`routes.predict.predict_body`) and refusals
(`errors.error_answer`) - and counts the request in the same metrics.

The FastAPI route stays what /docs and /openapi.json describe, and it still answers what
the lane passes on: a `top_k` that is not a number in range (FastAPI's validation error)
and content types the lane does not read (a 415 from the route). `VISIONDECK_FAST_LANE=false`
turns the lane off (every request then takes the route); the API tests run both ways.
Being in front of FastAPI's OpenTelemetry layer, lane requests make no FastAPI spans:
turn the lane off where those traces matter more than throughput.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from visiondeck.serve.api.bodies import content_length, receive_body
from visiondeck.serve.api.deps import check_caller
from visiondeck.serve.errors import INTERNAL_ERROR, error_answer
from visiondeck.serve.routes.predict import predict_body
from visiondeck.serve.services import Services

__all__ = ["PredictLane"]

log = logging.getLogger("visiondeck.serve")

_READABLE = ("multipart/form-data", "application/json", "application/octet-stream", "")
_PATH = "/predict"


class PredictLane:
    """ASGI middleware: serves `POST /predict`, passes everything else to `app`."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.limit = services.settings.body_limit(1)
        self.requests = services.metrics.requests
        self.latency = services.metrics.latency.labels(_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or _route_path(scope) != _PATH):
            await self.app(scope, receive, send)
            return
        query = _query(scope.get("query_string", b""))
        headers = Headers(scope=scope)
        content_type = headers.get("content-type", "")
        if query is None or not _readable(content_type):
            await self.app(scope, receive, send)  # the route's validation / 415 answers
            return
        started = time.perf_counter()
        status = 500
        try:
            status = await self._predict(scope, receive, send, headers, content_type, query,
                                         started)
        finally:
            self.requests.labels("POST", _PATH, str(status)).inc()
            self.latency.observe(time.perf_counter() - started)

    async def _predict(self, scope: Scope, receive: Receive, send: Send, headers: Headers,
                       content_type: str, query: dict[str, Any], started: float) -> int:
        services = self.services
        client = scope.get("client")
        try:
            caller = await check_caller(services, headers, client[0] if client else None,
                                        "predict")
            with services.engine.admit():
                body = await receive_body(receive, self.limit, content_length(scope))
                answer = await predict_body(services, content_type, body, query.get("label"),
                                            caller.id, started, query.get("top_k"))
        except Exception as exc:
            refusal = error_answer(exc)
            if refusal is None:
                log.exception("unexpected error", exc_info=exc)
                refusal = 500, INTERNAL_ERROR, None
            status, payload, extra = refusal
            services.metrics.errors.labels(payload["error"]).inc()
            if status == 413:  # the rest of the body is never read
                extra = {**(extra or {}), "connection": "close"}
            await _send_json(send, status, payload, extra)
            return status
        await _send_json(send, 200, answer)
        return 200


# Starlette's JSONResponse encoding (compact, UTF-8, no NaN), compiled once
_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


async def _send_json(send: Send, status: int, payload: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    """The bytes and headers `JSONResponse(payload, status, headers)` sends, without building
    a Response object per request."""
    body = _ENCODE(payload).encode()
    raw = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _route_path(scope: Scope) -> str:
    """The path as routes see it (without the prefix of a `--root-path` deployment)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _query(raw: bytes) -> dict[str, Any] | None:
    """`top_k` (int in 1..100) and `label`; None when `top_k` is invalid (the route's
    validation then answers, in FastAPI's words)."""
    if not raw:
        return {}
    out: dict[str, Any] = {}
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if key == "top_k":
            if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 100:
                return None
            out["top_k"] = int(value)
        elif key == "label":
            out["label"] = value
    return out


def _readable(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind in _READABLE or kind.startswith("image/")
