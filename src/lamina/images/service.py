"""Images: register, upload, update, delete, read and list; who may do what is checked here.

An upload is several steps that must complete or leave nothing: the image is marked
``uploading`` (with the writing process and a progress time), the file is streamed to its
store while MD5 and SHA-256 are computed beside the I/O, and only then is the image marked
``available``. Any failure marks it ``error`` and removes whatever the store had written; an
upload whose writer died (a killed manager) is found by ``recover_uploads`` and marked
``error`` the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeAlias

from sqlalchemy import (
    Row,
    String,
    asc,
    bindparam,
    case,
    cast,
    desc,
    func,
    literal_column,
    select,
    text,
    tuple_,
)
from sqlalchemy.orm import Session

from lamina.db import Database
from lamina.db.refs import pick_named
from lamina.db.types import new_id, utcnow
from lamina.errors import Conflict, InvalidRequest, InvalidState, LaminaError, NotFound
from lamina.identity.access import Need, check, may_see, shown_owner, visible_to
from lamina.identity.principal import Principal
from lamina.images.hashing import StreamDigests
from lamina.images.models import Image, ImageEvent
from lamina.stores.base import CHUNK, ImageStore, StoredObject

log = logging.getLogger(__name__)
KIND = "image"
BRIEF = ("id", "name", "architecture", "access", "type", "format", "size", "store", "status")
SORTABLE = (
    "name",
    "architecture",
    "access",
    "status",
    "size",
    "type",
    "format",
    "store",
    "owner",
    "created_at",
    "updated_at",
    "uploaded_at",
    "accessed_at",
    "access_count",
    "id",
)
#: Sort keys no image lacks, so a marker always has a place in the order.
PAGEABLE = ("name", "access", "status", "store", "created_at", "updated_at", "access_count", "id")
FILTERABLE = SORTABLE + ("checksum", "sha256", "kernel", "ramdisk", "location")


def record(
    session: Session, image_id: str, who: Principal | None, action: str, detail: str | None = None
) -> None:
    session.connection().execute(
        _EVENTS.insert(),
        {
            "image_id": image_id,
            "at": utcnow(),
            "user_id": who.user_id if who else None,
            "access_key": who.access_key if who else None,
            "action": action,
            "detail": detail,
        },
    )


# The metadata requests' path runs these prebuilt Core statements with bound parameters:
# SQLAlchemy then reuses their compiled form, and no ORM object is built per request.
ImageRow: TypeAlias = "Row[*tuple[Any, ...]]"
_IMAGES = Image.metadata.tables[Image.__tablename__]
_EVENTS = Image.metadata.tables[ImageEvent.__tablename__]
#: One image as a plain row: attributes as on ``Image``, plus ``visibility`` for the checks.
_ROW = select(*_IMAGES.c, _IMAGES.c.access.label("visibility")).where(
    _IMAGES.c.id == bindparam("image_id")
)
#: Sets the columns named by the parameters given with it; answers the changed row.
_UPDATE = (
    _IMAGES.update()
    .where(_IMAGES.c.id == bindparam("_image_id"))
    .returning(*_IMAGES.c, _IMAGES.c.access.label("visibility"))
)


def image_row(session: Session, ref: str, who: Principal, need: Need = "read") -> ImageRow:
    """``get_image`` as a read-only row (by id, else by name)."""
    row = session.connection().execute(_ROW, {"image_id": ref}).first()
    if row is None:
        image_id = _named(session, ref, who).id
        row = session.connection().execute(_ROW, {"image_id": image_id}).one()
    check(session, who, KIND, row, need, ref)
    return row


def get_image(session: Session, ref: str, who: Principal, need: Need = "read") -> Image:
    """The image ``ref`` means, if ``who`` may see it and do what ``need`` says. An id keeps
    VISOR's answers: NotFound for an image the caller may not see, Forbidden for one they
    may see but not do ``need`` on. Otherwise a name (``lamina.db.refs.pick_named``: the
    caller's own image of that name first, else the only one they may see): NotFound when
    no image they may see has it, ``Ambiguous`` (400, listing the candidates) when several
    have it."""
    image = session.get(Image, ref)
    if image is None:
        image = _named(session, ref, who)
    check(session, who, KIND, image, need, ref)
    return image


def _named(session: Session, ref: str, who: Principal) -> Image:
    named = list(
        session.scalars(
            select(Image)
            .where(Image.name == ref, visible_to(who, KIND, Image.id, Image.owner, Image.access))
            .order_by(Image.created_at, Image.id)
            .limit(100)
        )
    )
    found = pick_named("image", ref, named, who.user_id)
    if found is None:
        raise NotFound(f"image {ref!r} does not exist", image=ref)
    return found


def _check_links(session: Session, who: Principal, fields: dict[str, Any]) -> None:
    """The ``kernel`` and ``ramdisk`` an image names (an id or a name, stored as the id) are
    images ``who`` may see, of that type or none."""
    for key, kind in (("kernel", "kernel"), ("ramdisk", "ramdisk")):
        ref = fields.get(key)
        if not ref:
            continue
        try:
            target = get_image(session, ref, who)
        except NotFound:
            raise InvalidRequest(f"{key} {ref!r} is not a registered image") from None
        fields[key] = target.id
        if target.type not in (kind, None):
            raise InvalidRequest(f"{key} {ref!r} is an image of type {target.type!r}")


def register(
    session: Session,
    who: Principal,
    fields: dict[str, Any],
    others: dict[str, str],
    default_access: str,
) -> ImageRow:
    """Record an image's metadata; it is ``locked`` until a file or location arrives."""
    if not fields.get("name"):
        raise InvalidRequest("an image needs a name")
    _check_links(session, who, fields)
    now = utcnow()
    image_id = new_id()
    session.connection().execute(
        _IMAGES.insert(),
        {
            "id": image_id,
            "name": fields["name"],
            "architecture": fields.get("architecture"),
            "access": fields.get("access") or default_access,
            "status": "locked",
            "type": fields.get("type"),
            "format": fields.get("format"),
            "store": fields["store"],
            "kernel": fields.get("kernel"),
            "ramdisk": fields.get("ramdisk"),
            "owner": who.user_id,
            "others": others,
            "created_at": now,
            "updated_at": now,
            "access_count": 0,
        },
    )
    record(session, image_id, who, "register")
    return image_row(session, image_id, who)


def update(
    session: Session, who: Principal, ref: str, fields: dict[str, Any], others: dict[str, str]
) -> ImageRow:
    """Change user-managed attributes of the image ``ref`` (id or name; owners and admins)."""
    image = image_row(session, ref, who, "own")
    image_id = image.id
    _check_links(session, who, fields)
    if "store" in fields and fields["store"] != image.store and image.status == "available":
        raise Conflict("the store of an available image cannot change")
    if "name" in fields and not fields["name"]:
        raise InvalidRequest("an image needs a name")
    values = {key: value for key, value in fields.items() if key != "location"}
    if others:
        values["others"] = {**(image.others or {}), **others}
    values["updated_at"] = utcnow()
    changed = session.connection().execute(_UPDATE, {"_image_id": image_id, **values}).one()
    record(session, image_id, who, "update", ", ".join(sorted({*fields, *others})))
    return changed


def begin_upload(session: Session, who: Principal, image: Image, writer: str) -> None:
    """Claim a ``locked`` or ``error`` image for a file (VISOR: 409 for any other)."""
    check(session, who, KIND, image, "own", image.id)
    if image.status not in ("locked", "error"):
        raise InvalidState(
            f"cannot assign a file to image {image.id}: it is {image.status} "
            "(only locked or error images take one)",
            status=image.status,
        )
    image.status = "uploading"
    image.error = None
    image.upload_by = writer
    image.upload_seen = utcnow()
    record(session, image.id, who, "upload-start")


def finish_upload(
    session: Session,
    who: Principal | None,
    image_id: str,
    stored: StoredObject,
    md5: str | None,
    sha256: str | None,
    declared: dict[str, str],
) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id!r} was deleted during its upload")
    _check_declared(stored, md5, sha256, declared)
    image.status = "available"
    image.size = stored.size
    image.location = stored.location
    image.checksum = md5 or stored.checksum
    image.sha256 = sha256
    image.uploaded_at = utcnow()
    image.upload_by = None
    image.upload_seen = None
    record(session, image.id, who, "upload", f"{stored.size} bytes")
    return image


def _check_declared(
    stored: StoredObject, md5: str | None, sha256: str | None, declared: dict[str, str]
) -> None:
    for key, actual in (("checksum", md5), ("sha256", sha256), ("size", str(stored.size))):
        expected = declared.get(key)
        if expected and actual and expected != actual:
            raise InvalidRequest(
                f"the file's {key} is {actual}, not the declared {expected}: "
                "it was damaged on the way; the image is left in error",
                attribute=key,
            )


def fail_upload(session: Session, image_id: str, error: str) -> None:
    image = session.get(Image, image_id)
    if image is not None and image.status == "uploading":
        image.status = "error"
        image.error = error
        image.upload_by = None
        record(session, image.id, None, "upload-failed", error[:500])


def release_claim(session: Session, image_id: str, status: str, error: str | None) -> None:
    """Give back an image claimed by ``begin_upload`` whose file was refused before any
    byte was stored: it is ``status`` again (locked or error), with its ``error``."""
    image = session.get(Image, image_id)
    if image is not None and image.status == "uploading":
        image.status, image.error, image.upload_by = status, error, None
        image.upload_size = None
        record(session, image.id, None, "upload-refused")


def save_file(store: ImageStore, image_id: str, chunks: Iterable[bytes]) -> StoredObject:
    """Write the file; on any failure nothing stays in the store."""
    try:
        return store.save(image_id, chunks)
    except LaminaError:
        raise
    except Exception as exc:
        raise InvalidRequest(f"the upload broke off: {type(exc).__name__}: {exc}") from exc


def store_file(
    db: Database,
    store: ImageStore,
    who: Principal | None,
    image_id: str,
    chunks: Iterable[bytes],
    declared: dict[str, str],
) -> Image:
    """Stream ``chunks`` into ``store`` as the file of image ``image_id`` (claimed by
    ``begin_upload``), MD5 and SHA-256 computed on the way, and make the image available.
    On any failure the image is left in ``error`` with nothing in the store, and the
    exception propagates. Blocking: runs in a worker thread."""
    digests = StreamDigests(chunks)
    try:
        stored = save_file(store, image_id, digests)
    except BaseException as exc:
        message = exc.message if isinstance(exc, LaminaError) else f"upload failed: {exc!r}"
        with db.write() as s:
            fail_upload(s, image_id, message)
        raise
    try:
        with db.write() as s:
            return finish_upload(s, who, image_id, stored, digests.md5, digests.sha256, declared)
    except LaminaError as exc:
        store.delete(stored.location)
        with db.write() as s:
            fail_upload(s, image_id, exc.message)
        raise


def file_chunks(path: Path) -> Iterator[bytes]:
    """A local file in the stores' chunk size."""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def delete(session: Session, who: Principal, image: Image) -> dict[str, Any]:
    check(session, who, KIND, image, "own", image.id)
    if image.status == "uploading":
        raise InvalidState(f"image {image.id} is being uploaded; try again when it is done")
    session.delete(image)
    return {"store": image.store, "location": image.location}


def touch(session: Session, image: Image) -> None:
    """VISOR's tracking: one more download."""
    image.access_count = (image.access_count or 0) + 1
    image.accessed_at = utcnow()


def _listing(
    session: Session,
    who: Principal,
    columns: Any,
    filters: dict[str, str],
    sort: str,
    direction: str,
    limit: int,
    marker: str | None,
) -> Any:
    """The listing's SELECT of ``columns``: what ``who`` may see, filtered on any attribute
    (extra ones too), sorted, paged."""
    if sort not in SORTABLE:
        raise InvalidRequest(f"cannot sort by {sort!r}; one of {', '.join(SORTABLE)}")
    if direction not in ("asc", "desc"):
        raise InvalidRequest("dir must be asc or desc")
    query = select(*columns).where(visible_to(who, KIND, Image.id, Image.owner, Image.access))
    for key, value in filters.items():
        if key in FILTERABLE:
            query = query.where(cast(getattr(Image, key), String) == value)
        else:
            query = query.where(Image.others[key].as_string() == value)
    column = getattr(Image, sort)
    order = asc if direction == "asc" else desc
    if marker and sort not in PAGEABLE:
        raise InvalidRequest(
            f"a marker pages by an attribute every image has ({', '.join(PAGEABLE)}), not {sort!r}"
        )
    if marker:
        after = session.get(Image, marker)
        if after is None or not may_see(session, who, after, KIND):
            raise InvalidRequest(f"marker {marker!r} is not an image id")
        pivot = (getattr(after, sort), after.id)
        bound = tuple_(column, Image.id)
        query = query.where(bound > pivot if direction == "asc" else bound < pivot)
    return query.order_by(order(column), order(Image.id)).limit(limit)


def list_images(
    session: Session,
    who: Principal,
    *,
    filters: dict[str, str],
    sort: str = "created_at",
    direction: str = "asc",
    limit: int = 1000,
    marker: str | None = None,
) -> list[Image]:
    """Images ``who`` may see, filtered on any attribute (extra ones too), sorted, paged."""
    query = _listing(session, who, [Image], filters, sort, direction, limit, marker)
    return list(session.scalars(query))


def brief_listing(
    session: Session,
    who: Principal,
    *,
    filters: dict[str, str],
    sort: str = "created_at",
    direction: str = "asc",
    limit: int = 1000,
    marker: str | None = None,
) -> bytes | None:
    """The brief listing as JSON bytes built by the database (as compute.listing does for
    instances), or None when nothing matched. Same order, filters and pages as
    ``list_images``; a test holds the two together."""
    columns = [getattr(Image, name).label(name) for name in BRIEF]
    sort_key = getattr(Image, sort).label("_sort") if sort in SORTABLE else Image.id
    query = _listing(session, who, [*columns, sort_key], filters, sort, direction, limit, marker)
    page = query.subquery()
    fields: list[Any] = []
    for name in BRIEF:
        fields += [literal_column(f"'{name}'"), page.c[name]]
    if session.get_bind().dialect.name == "postgresql":
        way = "ASC" if direction == "asc" else "DESC"
        ordered = func.json_build_object(*fields).op("ORDER BY")(text(f"_sort {way}, id {way}"))
        document = session.scalar(select(func.json_agg(ordered)))
        if not document:
            return None
        return b'{"images":' + json.dumps(document, separators=(",", ":")).encode() + b"}"
    # SQLite aggregates the ordered subquery in its order (it never flattens it).
    built: str | None = session.scalar(select(func.json_group_array(func.json_object(*fields))))
    if not built or built == "[]":
        return None
    return b'{"images":' + built.encode() + b"}"


def describe(
    image: Image | ImageRow, base_url: str, brief: bool = False, viewer: Principal | None = None
) -> dict[str, Any]:
    """The image's metadata; ``viewer`` (a reader of someone else's public or shared image)
    is not told whose it is."""
    full: dict[str, Any] = {
        "id": image.id,
        "uri": f"{base_url}/images/{image.id}",
        "name": image.name,
        "architecture": image.architecture,
        "access": image.access,
        "status": image.status,
        "size": image.size,
        "type": image.type,
        "format": image.format,
        "store": image.store,
        "location": image.location,
        "kernel": image.kernel,
        "ramdisk": image.ramdisk,
        "owner": shown_owner(viewer, image.owner),
        "checksum": image.checksum,
        "sha256": image.sha256,
        "created_at": image.created_at,
        "uploaded_at": image.uploaded_at,
        "updated_at": image.updated_at,
        "accessed_at": image.accessed_at,
        "access_count": image.access_count,
        "error": image.error,
        **(image.others or {}),
    }
    return {k: full[k] for k in BRIEF} if brief else full


def history(session: Session, who: Principal, image: Image) -> list[dict[str, Any]]:
    """The image's history. Its owner and administrators see who did what; another reader
    (of a public or shared image) sees their own actions as theirs and nobody else's access
    key."""
    check(session, who, KIND, image, "read", image.id)
    events = session.scalars(
        select(ImageEvent).where(ImageEvent.image_id == image.id).order_by(ImageEvent.id)
    )
    everyone = who.is_admin or image.owner == who.user_id

    def actor(event: ImageEvent) -> str | None:
        if everyone or event.user_id == who.user_id or event.user_id is None:
            return event.access_key
        return "another user"

    return [{"at": e.at, "user": actor(e), "action": e.action, "detail": e.detail} for e in events]


def recover_uploads(
    session: Session,
    stores: dict[str, ImageStore],
    alive: Any,
    stale_after: float,
    resumable_after: float,
    staging: Path,
) -> list[str]:
    """Turn uploads whose writer died, or that made no progress for ``stale_after`` seconds
    (``resumable_after`` for resumable ones, whose client may pause), to ``error``; remove
    what they left in their store or staging area. Returns the images fixed."""
    now = utcnow()
    fixed = []
    for image in session.scalars(select(Image).where(Image.status == "uploading")):
        resumable = image.upload_by == "resumable"
        limit = timedelta(seconds=resumable_after if resumable else stale_after)
        silent = image.upload_seen is None or now - image.upload_seen > limit
        if not silent and (resumable or alive(image.upload_by or "")):
            continue
        store = stores.get(image.store)
        if store is not None:
            try:
                store.discard_partial(image.id)
            except LaminaError:
                log.warning("could not remove the partial file of image %s", image.id)
        (staging / f"{image.id}.part").unlink(missing_ok=True)
        fail_upload(session, image.id, "the upload was interrupted or abandoned")
        fixed.append(image.id)
    return fixed


def statistics(session: Session, who: Principal, top: int = 10) -> dict[str, Any]:
    """What the web UI's statistics page shows: images per store, format, architecture and
    status, the most used, and how many were never downloaded (of those ``who`` may see)."""
    seen = visible_to(who, KIND, Image.id, Image.owner, Image.access)

    def count_by(column: Any) -> dict[str, int]:
        rows = session.execute(select(column, func.count()).where(seen).group_by(column))
        return {str(key): int(n) for key, n in rows}

    most_used = session.execute(
        select(Image.id, Image.name, Image.access_count)
        .where(seen, Image.access_count > 0)
        .order_by(Image.access_count.desc(), Image.id)
        .limit(top)
    )
    total, size, never = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(Image.size), 0),
            func.coalesce(func.sum(case((Image.access_count == 0, 1), else_=0)), 0),
        ).where(seen)
    ).one()
    return {
        "images": int(total),
        "bytes": int(size),
        "never_used": int(never),
        "by_store": count_by(Image.store),
        "by_format": count_by(Image.format),
        "by_architecture": count_by(Image.architecture),
        "by_status": count_by(Image.status),
        "most_used": [{"id": i, "name": n, "access_count": c} for i, n, c in most_used],
    }
