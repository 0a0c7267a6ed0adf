"""Reading the audit trail, and the time forms its filters accept."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.audit.models import AuditEvent
from lamina.errors import InvalidRequest

#: The methods whose requests are recorded: the ones that may change state.
RECORDED_METHODS = ("POST", "PUT", "PATCH", "DELETE")

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, name: str = "time", now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (``2026-01-02T03:04:05Z``; no zone means UTC) or
    from a span back from ``now`` (``90s``, ``30m``, ``1h``, ``2d``, ``1w``). Raises
    ``InvalidRequest`` naming ``name`` for anything else."""
    relative = _RELATIVE.match(text)
    try:
        if relative:
            amount, unit = int(relative.group(1)), relative.group(2)
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
        when = datetime.fromisoformat(text.strip())
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"{name}: expected an ISO 8601 time (2026-01-02T03:04:05Z) or a span back from now "
            f"(30s, 30m, 1h, 2d, 1w), got {text!r}"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def list_events(
    session: Session,
    *,
    access_key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    method: str | None = None,
    limit: int = 100,
) -> Sequence[AuditEvent]:
    """Recorded requests, newest first: those of ``access_key`` (the user's, or the one a
    refused request claimed), made at or after ``since`` and before ``until``, with
    ``method``. Raises ``InvalidRequest`` for a method that is never recorded."""
    query = select(AuditEvent)
    if access_key is not None:
        query = query.where(AuditEvent.access_key == access_key)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    if method is not None:
        method = method.upper()
        if method not in RECORDED_METHODS:
            raise InvalidRequest(
                f"method: only {', '.join(RECORDED_METHODS)} requests are recorded, not {method!r}"
            )
        query = query.where(AuditEvent.method == method)
    query = query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
    return session.scalars(query).all()


def describe_event(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at,
        "user_id": event.user_id,
        "access_key": event.access_key,
        "method": event.method,
        "path": event.path,
        "status": event.status,
        "outcome": event.outcome,
        "remote_addr": event.remote_addr,
        "request_id": event.request_id,
        "duration_ms": event.duration_ms,
    }
