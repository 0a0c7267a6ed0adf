"""``/audit``: the recorded state-changing requests (administrators only; ``create_app``
includes this router behind the ``admin`` dependency), a thin layer over
``lamina.audit.queries``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.audit.queries import find_event, find_events
from lamina.identity.principal import Principal
from lamina.services import Services

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def audit_events(
    user: str | None = Query(None, description="Access key of the caller"),
    since: str | None = Query(None, description="ISO 8601 time, or a span back: 30m, 1h, 2d"),
    until: str | None = Query(None, description="ISO 8601 time, or a span back: 30m, 1h, 2d"),
    method: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Recorded requests, newest first."""
    found = find_events(svc, who, user=user, since=since, until=until, method=method, limit=limit)
    return {"events": found}


@router.get("/{event_id}")
def audit_event(
    event_id: int = Path(ge=1, le=2**63 - 1),  # what the id column can hold
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """One recorded request."""
    return {"event": find_event(svc, who, event_id)}
