"""`POST /predict` answered in front of the framework: the service's hot path, kept lean.

Profiling the service under load (py-spy, 28 px images) showed that the event loop, not
inference, bounds throughput, and that a third of the loop's time went to layers a
prediction does not need: FastAPI's error, telemetry and body-limit layers, route
matching, dependency resolution and response validation. `PredictFastPath` is the
outermost ASGI layer (behind CORS only: see `app._Service`) and answers `POST /predict`
itself by calling exactly what the FastAPI route calls - `deps.check_caller` (credentials,
rate limit), `bodies.limited_receive` (the body's size and time, the same function the
app's body-limit layer uses), `predictions.predict_request` (read, admit, classify,
record), `errors.error_answer` (refusals) and `metrics.observe_request` - so the two paths
cannot answer differently. It owns no rule of its own.

It passes on to FastAPI only what the route describes differently: a `top_k` that is not a
number in range gets FastAPI's validation error from the route. The benchmark
(benchmarks/bench_serve_peers.py) runs the service with and without it;
`VISIONDECK_FAST_LANE=false` turns it off. Being in front of FastAPI's OpenTelemetry
layer, its requests make no FastAPI spans.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from visiondeck.serve.api.bodies import content_length, limited_receive, route_path
from visiondeck.serve.api.deps import check_caller
from visiondeck.serve.api.rules import parse_top_k
from visiondeck.serve.errors import INTERNAL_ERROR, ServeError, error_answer
from visiondeck.serve.predictions import predict_request
from visiondeck.serve.services import Services

__all__ = ["PredictFastPath"]

log = logging.getLogger("visiondeck.serve")

_PATHS = frozenset({"/predict", "/predict/"})
_TEMPLATE = "/predict"  # the metrics label: the route template, as the app layer counts it


class PredictFastPath:
    """ASGI middleware: serves `POST /predict`, passes everything else to `app`."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or route_path(scope) not in _PATHS):
            await self.app(scope, receive, send)
            return
        query = _query(scope.get("query_string", b""))
        if query is None:
            await self.app(scope, receive, send)  # the route's validation answers
            return
        started = time.perf_counter()
        status = 500
        try:
            status = await self._predict(scope, receive, send, query, started)
        finally:
            self.services.metrics.observe_request("POST", _TEMPLATE, status,
                                                  time.perf_counter() - started)

    async def _predict(self, scope: Scope, receive: Receive, send: Send,
                       query: dict[str, Any], started: float) -> int:
        services = self.services
        settings = services.settings
        headers = Headers(scope=scope)  # as the route's Request.headers reads them
        client = scope.get("client")
        try:
            caller = await check_caller(services, headers, client[0] if client else None,
                                        "predict")
            bounded = limited_receive(receive, settings.body_limit(_TEMPLATE),
                                      content_length(scope), settings.body_timeout_s)
            answer = await predict_request(services, bounded, headers.get("content-type", ""),
                                           query.get("label"), caller.id, started,
                                           query.get("top_k"))
        except Exception as exc:
            refusal = error_answer(exc)
            if refusal is None:
                log.exception("unexpected error", exc_info=exc)
                refusal = 500, INTERNAL_ERROR, None
            status, payload, extra = refusal
            services.metrics.errors.labels(payload["error"]).inc()
            if status in (408, 413):  # the rest of the body is never read
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


def _query(raw: bytes) -> dict[str, Any] | None:
    """`top_k` (through `rules.parse_top_k`) and `label`; None when `top_k` is invalid, so
    the route answers it in FastAPI's words as for any other invalid parameter."""
    if not raw:
        return {}
    out: dict[str, Any] = {}
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if key == "top_k":
            try:
                out["top_k"] = parse_top_k(value)
            except ServeError:
                return None
        elif key == "label":
            out["label"] = value
    return out
