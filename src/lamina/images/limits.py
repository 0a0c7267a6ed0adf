"""How many bytes an image file may have, decided before a byte is stored.

Three limits apply to every file that comes in (a plain upload, a resumable upload, an http
location): ``images.max_size_bytes``; what the store can take (``ImageStore.room``: the free
space of the file store's disk, the largest object the s3 store can write; for a resumable
upload also the free space of the staging folder); and the owner's ``image_bytes`` quota.

A size the request declares (``X-Image-Meta-Size``, ``Content-Length``, a resumable upload's
``size``, an http location's probed size) is checked against all three at once: ``TooLarge``
or ``QuotaExceeded``, and nothing is recorded. An upload that declares no size may bring
what the three still allow, and reserves that much of the quota while it runs. Either way
the body is cut off (``Limited``) as soon as it passes what was allowed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from lamina.errors import InvalidRequest, LaminaError, QuotaExceeded, TooLarge
from lamina.images.quota import check_image_bytes, image_bytes_left
from lamina.stores.base import ImageStore

#: A declared size past every limit (and past what a BIGINT column holds).
BEYOND = 2**63


@dataclass(frozen=True)
class Allowance:
    """What one upload may bring: ``size`` bytes at most, and the error past them."""

    size: int
    #: The size the request declared, or None.
    declared: int | None
    #: What the body gets when it brings more than ``size``.
    error: LaminaError


def _too_large(what: str, limit: int, asked: int | None) -> TooLarge:
    asked_text = "an upload of unknown size" if asked is None else f"{asked} bytes"
    return TooLarge(
        f"image file too large: {asked_text} asked, {what} allows {limit}",
        limit=limit,
        requested=asked,
        limit_of=what,
    )


def _ceilings(store: ImageStore, max_size: int, staging: Path | None) -> list[tuple[str, int]]:
    found = [("images.max_size_bytes", max_size)]
    room = store.room()
    if room is not None:
        found.append((f"the {store.name} store (free space or largest object)", room))
    if staging is not None:
        staging.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(staging).free
        found.append(("the resumable uploads' folder (free space)", free))
    return found


def allow(
    session: Session,
    owner: str | None,
    store: ImageStore,
    max_size: int,
    declared: int | None,
    staging: Path | None = None,
) -> Allowance:
    """Check a file of ``declared`` bytes (None: not said) for ``owner``'s image in ``store``
    against the limits; raise ``TooLarge`` or ``QuotaExceeded``, else answer what the upload
    may bring. Locks the owner's row: call it in the transaction that records the upload
    (its reservation is the image's ``upload_size``)."""
    ceilings = _ceilings(store, max_size, staging)
    if declared is not None:
        for what, limit in ceilings:
            if declared > limit:
                raise _too_large(what, limit, declared)
        check_image_bytes(session, owner, declared)
        return Allowance(
            declared,
            declared,
            InvalidRequest(f"the body goes past the declared size of {declared} bytes"),
        )
    what, limit = min(ceilings, key=lambda c: c[1])
    left = image_bytes_left(session, owner)
    if left is not None and left < limit:
        quota_error = QuotaExceeded(
            f"quota exceeded: image_bytes (the upload went past the {left} bytes left)",
            quota="image_bytes",
            limit=left,
        )
        return Allowance(left, None, quota_error)
    return Allowance(limit, None, _too_large(what, limit, None))


def allow_files(
    session: Session, owner: str | None, store: ImageStore, max_size: int, sizes: list[int]
) -> None:
    """Check several files of known sizes, all going into ``store`` for ``owner`` (an
    appliance's): each against ``max_size``, their total against the store's room and the
    owner's quota. Raises ``TooLarge`` or ``QuotaExceeded``."""
    for size in sizes:
        if size > max_size:
            raise _too_large("images.max_size_bytes", max_size, size)
    total = sum(sizes)
    room = store.room()
    if room is not None and total > room:
        raise _too_large(f"the {store.name} store (free space or largest object)", room, total)
    check_image_bytes(session, owner, total)


def declared_size(content_length: str | None, meta_size: str | None) -> int | None:
    """The size a plain upload declares: ``X-Image-Meta-Size`` or ``Content-Length`` (which
    must then agree), None for a chunked body that says neither."""
    sizes = set()
    for value in (content_length, meta_size):
        if value is None:
            continue
        digits = value.strip()
        if not re.fullmatch(r"[0-9]+", digits):
            raise InvalidRequest(f"a size must be a number of bytes, not {value[:40]!r}")
        # More digits than any size a store or the database holds: too large, whatever it is
        # (and never a conversion of thousands of digits).
        sizes.add(int(digits) if len(digits) <= 19 else BEYOND)
    if len(sizes) > 1:
        raise InvalidRequest(
            f"X-Image-Meta-Size ({meta_size}) is not the body's Content-Length ({content_length})"
        )
    return sizes.pop() if sizes else None


def limited(chunks: Iterable[bytes], allowance: Allowance) -> Iterator[bytes]:
    """``chunks``, cut off with the allowance's error as soon as they pass its size."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > allowance.size:
            raise allowance.error
        yield chunk
