"""Per-user quotas, checked inside the transaction that takes the resource.

The user's row is locked first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write
transactions are serial already), so concurrent requests of one user queue and none can
overshoot.
"""

from __future__ import annotations

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
            raise QuotaExceeded(
                f"quota exceeded: {name} (limit {limit}, in use {used}, requested {asked})",
                quota=name,
                limit=limit,
                used=int(used),
                requested=asked,
            )
