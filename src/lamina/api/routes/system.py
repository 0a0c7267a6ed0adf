"""``/health``, ``/config`` and ``/reconcile``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from lamina import __version__
from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.compute.reconcile import Difference, apply_fixes, find_differences
from lamina.config import public_view
from lamina.identity.accounts import require_admin
from lamina.identity.principal import Principal
from lamina.services import Services
from lamina.volumes.reconcile import find_volume_differences

health = APIRouter(tags=["system"])
system = APIRouter(tags=["system"])


@health.get("/health")
async def health_check(svc: Services = Depends(services)) -> dict[str, Any]:
    """Unauthenticated liveness: the manager answers and its database does."""
    with svc.db.read() as s:
        s.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__}


@system.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> Any:
    """The OpenAPI document of this API."""
    return request.app.openapi()


@system.get("/config")
def config(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    require_admin(who)
    return {"config": public_view(svc.settings)}


@system.get("/reconcile")
def reconcile(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    require_admin(who)
    return {"differences": [d.to_dict() for d in _differences(svc)]}


class ReconcileFix(BaseModel):
    """The differences to fix, by the ids a dry run (``GET /reconcile``) showed."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(min_length=1, max_length=1000)


@system.post("/reconcile")
def reconcile_fix(
    body: ReconcileFix, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """Find the differences again and fix those named that are still there, unchanged."""
    require_admin(who)
    return {"differences": apply_fixes(_differences(svc), body.ids)}


def _differences(svc: Services) -> list[Difference]:
    """Instances against their guests, then volumes, snapshots, targets and attachments
    (after the guests' fixes: an orphan guest undefined takes its stray disks with it)."""
    return find_differences(svc) + find_volume_differences(svc)
