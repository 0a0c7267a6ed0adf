"""``/health``, ``/config`` and ``/reconcile``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import text

from lamina import __version__
from lamina.api.auth import principal, require_admin
from lamina.api.deps import services
from lamina.compute.reconcile import Difference, apply_fixes, find_differences
from lamina.config import public_view
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


@system.post("/reconcile")
def reconcile_fix(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    require_admin(who)
    return {"differences": apply_fixes(_differences(svc))}


def _differences(svc: Services) -> list[Difference]:
    """Instances against their guests, then volumes, snapshots, targets and attachments
    (after the guests' fixes: an orphan guest undefined takes its stray disks with it)."""
    return find_differences(svc) + find_volume_differences(svc)
