"""What the ``volume_bytes`` quota counts: the sizes of the owner's volumes and snapshots,
whatever their state (a volume being created or in error still holds, or may hold, its
bytes).

Registered with identity's quota counters by the wiring (``lamina.manager``); identity keeps
the limits, the check and the error (``lamina.identity.quotas``).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lamina.identity.quotas import Counter, check_quotas
from lamina.volumes.models import Snapshot, Volume


def volume_bytes_used(session: Session, user_id: str) -> int:
    """Bytes of the owner's volumes and snapshots."""
    volumes = session.scalar(
        select(func.coalesce(func.sum(Volume.size_bytes), 0)).where(Volume.owner == user_id)
    )
    snapshots = session.scalar(
        select(func.coalesce(func.sum(Snapshot.size_bytes), 0)).where(Snapshot.owner == user_id)
    )
    return int(volumes or 0) + int(snapshots or 0)


COUNTERS: dict[str, Counter] = {"volume_bytes": volume_bytes_used}


def check_volume_bytes(session: Session, user_id: str | None, asked: int) -> None:
    """Raise ``QuotaExceeded`` if ``asked`` more bytes of volumes or snapshots would put the
    owner past their ``volume_bytes`` quota."""
    check_quotas(session, user_id, {"volume_bytes": asked}, COUNTERS)
