"""Request-scoped access to the manager's services."""

from __future__ import annotations

from fastapi import Request

from lamina.identity.principal import Principal
from lamina.services import Services


async def services(request: Request) -> Services:
    # async: FastAPI would run a plain function in its thread pool, a hop per request.
    svc: Services = request.app.state.services
    return svc


def caller(request: Request) -> tuple[Services, Principal]:
    """The services and the authenticated caller, read without more dependencies: for the
    busiest handlers (each dependency costs FastAPI tens of microseconds a request). Only for
    routes whose router depends on ``principal``, which has then already run."""
    who = getattr(request.state, "principal", None)
    if not isinstance(who, Principal):
        raise RuntimeError(f"{request.url.path} is served without authentication")
    svc: Services = request.app.state.services
    return svc, who
