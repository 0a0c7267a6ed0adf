"""The brief instance listing, built as JSON by the database itself.

``GET /instances`` is the API's hottest read. Having SQLite (``json_group_array``) or
PostgreSQL (``json_agg``) assemble the document, from a statement built once per shape of
filters, costs a third of building rows and encoding them in Python (docs/benchmarks.md). The
document is ``instances.describe`` cut to the brief fields; a test holds the two together on
both backends.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from lamina.compute.models import Host, Instance
from lamina.errors import InvalidRequest
from lamina.identity.access import may_see
from lamina.identity.models import Grant
from lamina.identity.principal import Principal

BRIEF = ("id", "name", "status", "host", "vcpus", "memory_mib")


@functools.cache
def _statement(dialect: str, status: bool, host: bool, marker: bool, member: bool) -> Select[Any]:
    shown = case(
        (and_(Host.status == "down", Instance.status.not_in(("error", "deleted"))), "unknown"),
        else_=Instance.status,
    )
    rows = (
        select(
            Instance.id.label("id"),
            Instance.name.label("name"),
            shown.label("status"),
            Host.name.label("host"),
            Instance.vcpus.label("vcpus"),
            Instance.memory_mib.label("memory_mib"),
            Instance.created_at.label("created_at"),
        )
        .outerjoin(Host, Instance.host_id == Host.id)
        .order_by(Instance.created_at, Instance.id)
        .limit(bindparam("limit"))
    )
    if status:
        rows = rows.where(Instance.status == bindparam("status"))
    else:
        rows = rows.where(Instance.status != "deleted")
    if host:
        rows = rows.where((Host.name == bindparam("host")) | (Host.id == bindparam("host")))
    if member:  # identity.access.visible_to, with the caller as a parameter
        me: BindParameter[str] = bindparam("me")
        granted = exists().where(
            Grant.resource_type == "instance",
            Grant.resource_id == Instance.id,
            Grant.user_id == me,
        )
        rows = rows.where(or_(Instance.owner == me, Instance.visibility == "public", granted))
    if marker:
        after = tuple_(
            bindparam("after_created", type_=Instance.created_at.type), bindparam("after_id")
        )
        rows = rows.where(tuple_(Instance.created_at, Instance.id) > after)
    page = rows.subquery()
    fields = [x for name in BRIEF for x in (literal_column(f"'{name}'"), page.c[name])]
    if dialect == "postgresql":
        ordered = func.json_build_object(*fields).op("ORDER BY")(
            tuple_(page.c.created_at, page.c.id)
        )
        return select(func.coalesce(func.json_agg(ordered), literal_column("'[]'::json")))
    # SQLite aggregates the ordered subquery in its order: it never flattens a subquery with
    # ORDER BY into an aggregate query.
    return select(func.json_group_array(func.json_object(*fields)))


def brief_listing(
    session: Session,
    who: Principal,
    *,
    status: str | None = None,
    host: str | None = None,
    limit: int = 1000,
    marker: str | None = None,
) -> bytes:
    """``{"instances": [...]}`` as JSON bytes: those ``who`` may see, oldest first, ``limit``
    at most, starting after the instance ``marker`` (the last id of the previous page)."""
    member = not who.is_admin
    params: dict[str, Any] = {
        "limit": limit,
        "status": status,
        "host": host,
        "me": who.user_id if member else None,
    }
    if marker:
        after = session.get(Instance, marker)
        if after is None or not (not member or may_see(session, who, after)):
            raise InvalidRequest(f"marker {marker!r} is not an instance id")
        params.update(after_created=after.created_at, after_id=after.id)
    dialect = session.get_bind().dialect.name
    statement = _statement(dialect, bool(status), bool(host), bool(marker), member)
    document = session.scalar(statement, {k: v for k, v in params.items() if v is not None})
    if dialect == "postgresql":
        document = json.dumps(document, separators=(",", ":"))
    return b'{"instances":' + str(document or "[]").encode() + b"}"
