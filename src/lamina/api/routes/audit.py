"""``/audit``: the recorded state-changing requests (administrators only; ``create_app``
includes this router behind the ``admin`` dependency)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from lamina.api.deps import services
from lamina.audit.service import describe_event, list_events, parse_time
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
) -> dict[str, Any]:
    """Recorded requests, newest first."""
    start = parse_time(since, name="since") if since else None
    end = parse_time(until, name="until") if until else None
    with svc.db.read() as s:
        found = list_events(s, access_key=user, since=start, until=end, method=method, limit=limit)
        return {"events": [describe_event(e) for e in found]}
