"""One router per concern. `create_app` includes `DEFAULT_ROUTERS` in this order.

To add pages (the web UI) or monitoring endpoints, write a module here with its own
`router = APIRouter(...)` and pass it to `create_app(settings, routers=[...])`, or add it
to `DEFAULT_ROUTERS` once it is part of every server.
"""

from __future__ import annotations

from fastapi import APIRouter

from visiondeck.serve.routes import admin, history, monitor, pages, predict, review, system

__all__ = ["DEFAULT_ROUTERS"]

DEFAULT_ROUTERS: tuple[APIRouter, ...] = (system.router, predict.router, history.router,
                                          admin.router, monitor.router, review.router,
                                          pages.router)
