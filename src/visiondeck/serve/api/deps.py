"""Dependencies shared by the routers, declared once as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from visiondeck.serve.api.auth import Principal
from visiondeck.serve.errors import RateLimited
from visiondeck.serve.services import Services

__all__ = ["AdminCaller", "MaybeCaller", "PredictCaller", "ServicesDep", "UnmeteredCaller",
           "check_caller", "client_id"]


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread
    # hop on every request for what is one attribute read
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def client_id(request: Request, principal: Principal) -> str:
    """Who a rate limit applies to: the credential, else the peer address."""
    return _client_id(request.client.host if request.client else None, principal)


def _client_id(host: str | None, principal: Principal) -> str:
    return principal.id if not principal.anonymous else f"ip:{host or 'unknown'}"


async def check_caller(services: Services, headers: Any, host: str | None, scope: str,
                       cost: float = 1.0) -> Principal:
    """Who is calling (401/403 when not allowed `scope`), charged `cost` against their rate
    limit (429). `headers`: any case-insensitive mapping; `host`: the peer address."""
    principal = services.auth.authorize(services.auth.identify(headers), scope)
    allowed, wait = await services.limiter.check(_client_id(host, principal), cost,
                                                 principal.rate)
    if not allowed:
        raise RateLimited(wait)  # counted in errors{kind="rate_limited"} by its handler
    return principal


async def _caller(request: Request, services: Services, scope: str, cost: float) -> Principal:
    return await check_caller(services, request.headers,
                              request.client.host if request.client else None, scope, cost)


async def predict_caller(request: Request, services: ServicesDep) -> Principal:
    return await _caller(request, services, "predict", 1.0)


async def admin_caller(request: Request, services: ServicesDep) -> Principal:
    return await _caller(request, services, "admin", 1.0)


async def unmetered_caller(request: Request, services: ServicesDep) -> Principal:
    """As `predict_caller` (a key when keys are required) without charging the rate limit:
    for /metrics (a scraper's fixed cadence is no abuse, and a server whose clients spent
    their budget must still be observable) and label PUTs (never limited: a label is the
    answer to a prediction already paid for)."""
    return services.auth.authorize(services.auth.identify(request.headers), "predict")


async def maybe_caller(request: Request, services: ServicesDep) -> Principal | None:
    """Who is calling a public route (None: nobody said), to decide how much it may see;
    a credential that is sent but wrong is still a 401."""
    return services.auth.identify(request.headers)


PredictCaller = Annotated[Principal, Depends(predict_caller)]
AdminCaller = Annotated[Principal, Depends(admin_caller)]
UnmeteredCaller = Annotated[Principal, Depends(unmetered_caller)]
MaybeCaller = Annotated[Principal | None, Depends(maybe_caller)]
