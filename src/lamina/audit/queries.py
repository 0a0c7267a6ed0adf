"""The audit trail, the use case a front end calls (the API's ``/audit``, a web UI): the
recorded state-changing requests, for administrators. What is recorded, and how, is
``lamina.audit.middleware``'s and ``lamina.audit.service``'s.

The audit trail sits below identity and the manager's container, so ``find_events`` takes
any object with what it uses of them: a ``Container`` with the database (``Services`` is
one) and a ``Caller`` that says whether it is an administrator (``Principal`` is one)."""

from __future__ import annotations

from typing import Any, Protocol

from lamina.audit.models import AuditEvent
from lamina.audit.service import describe_event, list_events, parse_time
from lamina.db import Database
from lamina.errors import Forbidden, NotFound


class Container(Protocol):
    """What the audit queries need of the manager's container."""

    @property
    def db(self) -> Database: ...


class Caller(Protocol):
    """What the audit queries need to know of who calls."""

    @property
    def is_admin(self) -> bool: ...


def find_events(
    svc: Container,
    who: Caller,
    *,
    user: str | None = None,
    since: str | None = None,
    until: str | None = None,
    method: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Recorded requests, newest first: those of the access key ``user``, made at or after
    ``since`` and before ``until`` (ISO 8601 times, or spans back from now: ``30m``, ``1h``,
    ``2d``), with ``method``. Administrators only (``Forbidden``)."""
    if not who.is_admin:
        raise Forbidden("only administrators may do this")
    start = parse_time(since, name="since") if since else None
    end = parse_time(until, name="until") if until else None
    with svc.db.read() as s:
        found = list_events(s, access_key=user, since=start, until=end, method=method, limit=limit)
        return [describe_event(e) for e in found]


def find_event(svc: Container, who: Caller, event_id: int) -> dict[str, Any]:
    """One recorded request by its id. Administrators only (``Forbidden``); ``NotFound``
    for an id never recorded."""
    if not who.is_admin:
        raise Forbidden("only administrators may do this")
    with svc.db.read() as s:
        event = s.get(AuditEvent, event_id)
        if event is None:
            raise NotFound(f"audit event {event_id} does not exist")
        return describe_event(event)
