"""What the ``image_bytes`` quota counts: the sizes of the owner's images that have a file
(whichever store), plus the sizes uploads in progress declared (or were allowed, for an
upload that declared none).

Registered with identity's quota counters by the wiring (``lamina.manager``); identity keeps
the limits, the check and the error (``lamina.identity.quotas``).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lamina.identity.quotas import Counter, check_quotas, quota_left
from lamina.images.models import Image


def image_bytes_used(session: Session, user_id: str) -> int:
    """Bytes of the owner's image files, and those their uploads in progress reserved."""
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


COUNTERS: dict[str, Counter] = {"image_bytes": image_bytes_used}


def image_bytes_left(session: Session, user_id: str | None) -> int | None:
    """What the owner's ``image_bytes`` quota still allows (never below 0), None for no
    limit. Locks the user's row: call it in the transaction that takes the bytes."""
    return quota_left(session, user_id, "image_bytes", image_bytes_used)


def check_image_bytes(session: Session, user_id: str | None, asked: int) -> None:
    """Raise ``QuotaExceeded`` if ``asked`` more image bytes would put the owner past their
    ``image_bytes`` quota."""
    check_quotas(session, user_id, {"image_bytes": asked}, COUNTERS)
