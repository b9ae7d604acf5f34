"""`create_app(settings)`: the FastAPI application, built per call (no import-time state).

Layers, outermost first: CORS (when origins are configured) → the `POST /predict` fast
path (serve/api/fast_predict.py: the hot path, answered without the layers below) →
FastAPI's own telemetry check, error, telemetry and body-limit layers → request metrics →
body size and time (`bodies.limited_receive`: 413 before a body is read, 408 for a slow
one) → FastAPI routing with one exception handler per error family, so every refusal is
a JSON `{"error", "detail", "hint"}` with a 4xx/503 status and nothing a client sends
produces a 500. Slashes are not redirected: `POST /predict/` (the dandelion seed's URL) is
a route of its own, and no answer reflects the request's `Host` into a `Location`.

Seams for later work:
- web pages: Jinja2 templates in `serve/templates/` (available as
  `app.state.templates`) and files in `serve/static/` (mounted at `/static` when the folder
  has files); add a router (e.g. `serve/routes/pages.py`) through `routers=` or
  `routes.DEFAULT_ROUTERS`;
- monitoring: `observers=[...]` (see serve/monitoring/observers.py) receive every prediction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visiondeck import __version__
from visiondeck.errors import VisionDeckError
from visiondeck.export.errors import BundleError
from visiondeck.imaging import ImageDecodeError
from visiondeck.serve.api.bodies import BodyLimitMiddleware
from visiondeck.serve.errors import INTERNAL_ERROR, ServeError, error_answer, error_body
from visiondeck.serve.monitoring.observers import PredictionObserver
from visiondeck.serve.services import STATIC_DIR, TEMPLATES_DIR, Services
from visiondeck.serve.settings import ServeSettings

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger("visiondeck.serve")

_DESCRIPTION = """Image classification with a VisionDeck Bundle on ONNX Runtime.

Send an image to `POST /predict` as multipart (`file` or `image`), as the raw body, or as
JSON `{"image": "<base64>"}`: `curl -F "image=@cat.jpg" http://localhost:8000/predict`.
Errors are JSON `{"error", "detail", "hint"}`."""


def create_app(settings: ServeSettings | None = None, *,
               observers: Iterable[PredictionObserver] = (),
               routers: Iterable[APIRouter] | None = None) -> FastAPI:
    """Build the service for `settings` (default: from `VISIONDECK_*` environment variables)."""
    from visiondeck.serve.routes import DEFAULT_ROUTERS

    settings = settings or ServeSettings()
    services = Services.build(settings, list(observers))
    _add_monitoring(services, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = _Service(
        title="VisionDeck", version=__version__, description=_DESCRIPTION, lifespan=lifespan,
        docs_url="/docs" if settings.docs else None, redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None, redirect_slashes=False,
    )
    app.state.services = services
    _add_exception_handlers(app, services)
    for router in routers if routers is not None else DEFAULT_ROUTERS:
        app.include_router(router)
    _add_web_seams(app)

    app.add_middleware(BodyLimitMiddleware, settings=settings,
                       on_refuse=lambda exc: services.metrics.errors.labels(exc.code).inc())
    app.add_middleware(_MetricsMiddleware, services=services)
    if settings.fast_lane:
        from visiondeck.serve.api.fast_predict import PredictFastPath

        app.front_layers.append(Middleware(PredictFastPath, services=services))
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.front_layers.append(Middleware(
            CORSMiddleware, allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"]))
    return app


class _Service(FastAPI):
    """FastAPI with `front_layers` (innermost first) in front of FastAPI itself.

    FastAPI runs its own steps outside every `add_middleware` layer: an OpenTelemetry check
    on each request, then error, telemetry and body-limit layers. The `/predict` fast path
    needs none of them (it answers every error itself) and they cost a twentieth of a
    prediction's CPU, so it goes in front of them, and CORS in front of it, so its answers
    carry CORS headers too. Everything the fast path passes on reaches FastAPI
    whole.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.front_layers: list[Middleware] = []
        self._front: ASGIApp | None = None

    def front_stack(self) -> ASGIApp:
        """The front layers around FastAPI's own entry point (built once, on first use)."""
        if self._front is None:
            app: ASGIApp = super().__call__
            for cls, args, kwargs in self.front_layers:
                app = cls(app, *args, **kwargs)
            self._front = app
        return self._front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (self._front or self.front_stack())(scope, receive, send)


def _add_monitoring(services: Services, settings: ServeSettings) -> None:
    """The drift observer (inert for a Bundle without reference statistics) and, when
    asked for, the upload keeper that lets `visiondeck retrain` use labelled predictions."""
    if settings.monitor:
        from visiondeck.monitor import DriftThresholds
        from visiondeck.serve.monitoring.drift import DriftObserver

        thresholds = DriftThresholds(min_window=settings.monitor_min_window,
                                     min_accuracy=settings.monitor_min_accuracy)
        services.observers.add(DriftObserver(
            services.engine, capacity=settings.monitor_window, store=services.store,
            writer=services.writer, thresholds=thresholds,
            refresh_s=settings.monitor_refresh_s))
    if settings.keep_uploads is not None:
        from visiondeck.serve.monitoring.upload_archive import UploadKeeper

        services.observers.add(UploadKeeper(settings.keep_uploads,
                                            max_bytes=settings.max_upload_bytes))


def create_app_from_env() -> FastAPI:
    """uvicorn factory for `visiondeck serve --workers N` (settings from the environment)."""
    return create_app(ServeSettings())


def _add_web_seams(app: FastAPI) -> None:
    from fastapi.templating import Jinja2Templates

    app.state.templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    if STATIC_DIR.is_dir() and any(p.name != "README.md" for p in STATIC_DIR.iterdir()):
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")


def _add_exception_handlers(app: FastAPI, services: Services) -> None:
    count = services.metrics.errors

    async def refusal(_request: Request, exc: Exception) -> JSONResponse:
        answer = error_answer(exc)
        assert answer is not None  # registered for the families error_answer maps
        status, body, headers = answer
        count.labels(body["error"]).inc()
        return JSONResponse(body, status_code=status, headers=headers)

    for family in (ServeError, ImageDecodeError, BundleError, VisionDeckError):
        app.add_exception_handler(family, refusal)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        count.labels("invalid_request").inc()
        # loc/msg/type: the shape /openapi.json declares for FastAPI's validation errors
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                   "type": e.get("type", "value_error")} for e in exc.errors()]
        return JSONResponse(error_body("invalid_request", errors,
                                       "check the parameters against /docs"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        count.labels(f"http_{exc.status_code}").inc()
        return JSONResponse(error_body(f"http_{exc.status_code}", exc.detail),
                            status_code=exc.status_code, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        count.labels(INTERNAL_ERROR["error"]).inc()
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse(INTERNAL_ERROR, status_code=500)


class _MetricsMiddleware:
    """Request count and latency per route template (bounded label values)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.metrics = services.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.observe_request(scope.get("method", ""),
                                         getattr(route, "path", None) or "unmatched", status,
                                         time.perf_counter() - start)
