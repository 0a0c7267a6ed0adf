"""What compute's quotas count: a user's live instances, their vCPUs and memory.

Registered with identity's quota counters by the wiring (``lamina.manager``); identity keeps
the limits, the check and the error (``lamina.identity.quotas``).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from lamina.compute.models import LIVE, Instance
from lamina.identity.quotas import Counter, check_quotas


def _live_sum(session: Session, user_id: str, column: ColumnElement[int]) -> int:

    used = session.scalar(
        select(func.coalesce(column, 0)).where(Instance.owner == user_id, Instance.status.in_(LIVE))
    )
    return int(used or 0)


def live_instances(session: Session, user_id: str) -> int:
    """How many instances the user owns that are not deleted."""
    return _live_sum(session, user_id, func.count())


def live_vcpus(session: Session, user_id: str) -> int:
    """The vCPUs of the user's live instances."""
    return _live_sum(session, user_id, func.sum(Instance.vcpus))


def live_memory_mib(session: Session, user_id: str) -> int:
    """The memory (MiB) of the user's live instances."""
    return _live_sum(session, user_id, func.sum(Instance.memory_mib))


COUNTERS: dict[str, Counter] = {
    "instances": live_instances,
    "vcpus": live_vcpus,
    "memory_mib": live_memory_mib,
}


def check_instance_quota(session: Session, user_id: str, vcpus: int, memory_mib: int) -> None:
    """Raise ``QuotaExceeded`` if one more instance of ``vcpus`` and ``memory_mib`` would put
    the user past a quota. Locks the user's row."""
    asked = {"instances": 1, "vcpus": vcpus, "memory_mib": memory_mib}
    check_quotas(session, user_id, asked, COUNTERS)
