"""Who may see and do what with a resource, enforced here so the API, CLI and web UI cannot
disagree.

- Admins see and do everything.
- A member sees their own resources, public ones, and private ones granted to them.
- A member acts on their own resources; a grant with ``operate`` access also allows the
  lifecycle actions; public resources are read-only to everyone but their owner.
- A resource the caller may not see is reported as not found (404); one they may see but not
  act on gets 403.
"""

from __future__ import annotations

from typing import Literal, Protocol

from sqlalchemy import ColumnElement, and_, exists, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from lamina.errors import Forbidden, InvalidRequest, NotFound
from lamina.identity.models import Grant, User
from lamina.identity.principal import Principal

Need = Literal["read", "operate", "own"]
ACCESS_LEVELS = ("read", "operate")


class Owned(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def owner(self) -> str | None: ...

    @property
    def visibility(self) -> str: ...


def visible_to(
    who: Principal,
    kind: str,
    id_column: InstrumentedAttribute[str],
    owner_column: InstrumentedAttribute[str | None],
    visibility_column: InstrumentedAttribute[str] | None = None,
) -> ColumnElement[bool]:
    """A WHERE clause keeping the rows ``who`` may see: their own, granted, or public (for
    kinds that have a ``visibility_column``; volumes and snapshots never are)."""
    if who.is_admin:
        return true()
    granted = exists().where(
        Grant.resource_type == kind, Grant.resource_id == id_column, Grant.user_id == who.user_id
    )
    if visibility_column is None:
        return or_(owner_column == who.user_id, granted)
    return or_(owner_column == who.user_id, visibility_column == "public", granted)


def shown_owner(who: Principal | None, owner: str | None) -> str | None:
    """The ``owner`` of a resource as ``who`` may see it: their own id, any id for an
    administrator, None (not whose it is) for a resource of another user's that ``who``
    sees because it is public or granted. ``who`` None: an internal caller, unchanged."""
    if who is None or who.is_admin or owner == who.user_id:
        return owner
    return None


def grant_of(session: Session, kind: str, resource_id: str, user_id: str) -> Grant | None:
    return session.scalar(
        select(Grant).where(
            and_(
                Grant.resource_type == kind,
                Grant.resource_id == resource_id,
                Grant.user_id == user_id,
            )
        )
    )


def may_see(session: Session, who: Principal, resource: Owned, kind: str = "instance") -> bool:
    if who.is_admin or resource.owner == who.user_id or resource.visibility == "public":
        return True
    return grant_of(session, kind, resource.id, who.user_id) is not None


def check(
    session: Session, who: Principal, kind: str, resource: Owned, need: Need, name: str
) -> None:
    """Raise NotFound if ``who`` may not see the resource, Forbidden if they may see it but
    not do what ``need`` says."""
    if who.is_admin or resource.owner == who.user_id:
        return
    grant = grant_of(session, kind, resource.id, who.user_id)
    if grant is None and resource.visibility != "public":
        raise NotFound(f"{kind} {name!r} does not exist", **{kind: name})
    if need == "read":
        return
    if need == "operate" and grant is not None and grant.access == "operate":
        return
    raise Forbidden(
        f"you may not {'act on' if need == 'operate' else 'change'} {kind} "
        f"{name!r}: it belongs to another user"
    )


def share(
    session: Session,
    who: Principal,
    kind: str,
    resource: Owned,
    name: str,
    grantee: str,
    access: str,
) -> Grant:
    """Grant ``grantee`` (an access key) access to a resource; owners and admins only."""
    check(session, who, kind, resource, "own", name)
    if access not in ACCESS_LEVELS:
        raise InvalidRequest(f"access must be one of {', '.join(ACCESS_LEVELS)}")
    user = session.scalar(select(User).where(User.access_key == grantee))
    if user is None:
        raise NotFound(f"user {grantee!r} does not exist", user=grantee)
    grant = grant_of(session, kind, resource.id, user.id)
    if grant is None:
        grant = Grant(
            resource_type=kind, resource_id=resource.id, user_id=user.id, granted_by=who.user_id
        )
        session.add(grant)
    grant.access = access
    session.flush()
    return grant


def unshare(
    session: Session, who: Principal, kind: str, resource: Owned, name: str, grantee: str
) -> None:
    check(session, who, kind, resource, "own", name)
    user = session.scalar(select(User).where(User.access_key == grantee))
    grant = user and grant_of(session, kind, resource.id, user.id)
    if not grant:
        raise NotFound(f"{kind} {name!r} is not shared with {grantee!r}")
    session.delete(grant)


def grants(
    session: Session, who: Principal, kind: str, resource: Owned, name: str
) -> list[tuple[Grant, str]]:
    check(session, who, kind, resource, "own", name)
    rows = session.execute(
        select(Grant, User.access_key)
        .join(User, Grant.user_id == User.id)
        .where(Grant.resource_type == kind, Grant.resource_id == resource.id)
        .order_by(User.access_key)
    )
    return [(g, ak) for g, ak in rows]
