"""``/health``, ``/config`` and ``/reconcile``: a thin layer over ``lamina.system``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from lamina import system as use_cases
from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.identity.principal import Principal
from lamina.services import Services

health = APIRouter(tags=["system"])
system = APIRouter(tags=["system"])


@health.get("/health")
async def health_check(svc: Services = Depends(services)) -> dict[str, Any]:
    """Unauthenticated liveness: the manager answers and its database does."""
    return use_cases.health(svc)


@system.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> Any:
    """The OpenAPI document of this API."""
    return request.app.openapi()


@system.get("/config")
def config(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    return {"config": use_cases.configuration(svc, who)}


@system.get("/reconcile")
def reconcile(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    return {"differences": use_cases.differences(svc, who)}


class ReconcileFix(BaseModel):
    """The differences to fix, by the ids a dry run (``GET /reconcile``) showed."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(min_length=1, max_length=1000)


@system.post("/reconcile")
def reconcile_fix(
    body: ReconcileFix, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """Find the differences again and fix those named that are still there, unchanged."""
    return {"differences": use_cases.fix_differences(svc, who, body.ids)}
