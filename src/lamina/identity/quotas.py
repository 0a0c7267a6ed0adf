"""Per-user quotas, checked inside the transaction that takes the resource.

The user's row is locked first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write
transactions are serial already), so concurrent requests of one user queue and none can
overshoot.

Byte quotas count what the owner holds plus what is on its way:

- ``image_bytes``: the sizes of the owner's images that have a file (whichever store), plus
  the sizes uploads in progress declared (or were allowed, for an upload that declared none);
- ``volume_bytes``: the sizes of the owner's volumes and snapshots, whatever their state
  (a volume being created or in error still holds, or may hold, its bytes).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lamina.errors import QuotaExceeded
from lamina.identity.models import User


def lock_user(session: Session, user_id: str) -> User | None:
    return session.scalar(select(User).where(User.id == user_id).with_for_update())


def check_instance_quota(session: Session, user_id: str, vcpus: int, memory_mib: int) -> None:
    from lamina.compute.instances import LIVE
    from lamina.compute.models import Instance

    user = lock_user(session, user_id)
    if user is None:
        return
    count, cpus, memory = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(Instance.vcpus), 0),
            func.coalesce(func.sum(Instance.memory_mib), 0),
        ).where(Instance.owner == user_id, Instance.status.in_(LIVE))
    ).one()
    for name, limit, used, asked in (
        ("instances", user.quota_instances, count, 1),
        ("vcpus", user.quota_vcpus, cpus, vcpus),
        ("memory_mib", user.quota_memory_mib, memory, memory_mib),
    ):
        if limit is not None and used + asked > limit:
            raise _refuse(name, limit, int(used), asked)


def _refuse(name: str, limit: int, used: int, asked: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"quota exceeded: {name} (limit {limit}, in use {used}, requested {asked})",
        quota=name,
        limit=limit,
        used=used,
        requested=asked,
    )


def image_bytes_used(session: Session, user_id: str) -> int:
    """Bytes of the owner's image files, and those their uploads in progress reserved."""
    from lamina.images.models import Image

    held = session.scalar(
        select(func.coalesce(func.sum(Image.size), 0)).where(
            Image.owner == user_id, Image.status == "available"
        )
    )
    coming = session.scalar(
        select(func.coalesce(func.sum(Image.upload_size), 0)).where(
            Image.owner == user_id, Image.status == "uploading"
        )
    )
    return int(held or 0) + int(coming or 0)


def volume_bytes_used(session: Session, user_id: str) -> int:
    """Bytes of the owner's volumes and snapshots."""
    from lamina.volumes.models import Snapshot, Volume

    volumes = session.scalar(
        select(func.coalesce(func.sum(Volume.size_bytes), 0)).where(Volume.owner == user_id)
    )
    snapshots = session.scalar(
        select(func.coalesce(func.sum(Snapshot.size_bytes), 0)).where(Snapshot.owner == user_id)
    )
    return int(volumes or 0) + int(snapshots or 0)


def image_bytes_left(session: Session, user_id: str | None) -> int | None:
    """What the owner's ``image_bytes`` quota still allows (never below 0), None for no
    limit. Locks the user's row: call it in the transaction that takes the bytes."""
    user = lock_user(session, user_id) if user_id else None
    if user is None or user.quota_image_bytes is None:
        return None
    return max(user.quota_image_bytes - image_bytes_used(session, user.id), 0)


def check_image_bytes(session: Session, user_id: str | None, asked: int) -> None:
    """Raise ``QuotaExceeded`` if ``asked`` more image bytes would put the owner past their
    ``image_bytes`` quota."""
    _check_bytes(session, user_id, asked, "image_bytes", image_bytes_used)


def check_volume_bytes(session: Session, user_id: str | None, asked: int) -> None:
    """Raise ``QuotaExceeded`` if ``asked`` more bytes of volumes or snapshots would put the
    owner past their ``volume_bytes`` quota."""
    _check_bytes(session, user_id, asked, "volume_bytes", volume_bytes_used)


def _check_bytes(
    session: Session,
    user_id: str | None,
    asked: int,
    name: str,
    used_by: Callable[[Session, str], int],
) -> None:
    """The check of one byte quota (``quota_<name>``), with the owner's row locked."""
    user = lock_user(session, user_id) if user_id else None
    limit = getattr(user, f"quota_{name}", None) if user is not None else None
    if user is None or limit is None:
        return
    used = used_by(session, user.id)
    if used + asked > limit:
        raise _refuse(name, limit, used, asked)
