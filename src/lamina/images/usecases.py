"""Images, the use cases a front end calls (the API's ``/images``, a web UI): register,
upload, change, read, download, list and delete, and the resumable upload. Each takes the
container and the caller, runs its own transactions and returns the image as the API shows
it; ``lamina.images.service`` holds the steps they take on an open session (which other
domains use too).

Streaming stays as the API had it: a file arrives as an async iterator of blocks that a
worker thread writes to its store (``images.transfer.body_blocks``), the functions that
stream are ``async`` and everything that writes or waits on a store runs in the thread pool;
the cheap reads (``list_brief``, ``show_image``) run where they are called.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio.to_thread
from sqlalchemy.orm import Session

from lamina.db.types import utcnow
from lamina.errors import InvalidRequest, LaminaError, NotFound
from lamina.identity.principal import Principal
from lamina.identity.signing import UNSIGNED
from lamina.images import limits, resumable, service
from lamina.images.models import Image
from lamina.images.transfer import body_blocks, parse_range
from lamina.jobs.runner import machine_boot
from lamina.stores import pick
from lamina.stores.base import ImageStore, StoredObject

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)
#: Who claims an image for an upload streamed by this process (``recover_uploads`` knows a
#: dead one by it).
WRITER = f"{machine_boot()}:{os.getpid()}:upload"


@dataclass(frozen=True)
class Upload:
    """An image's file arriving as a stream: its blocks, the length its sender declared (as
    sent, e.g. a ``Content-Length``; None if none) and whether a signature covers the bytes
    (an unsigned file is trusted only through the checksum declared with it)."""

    blocks: AsyncIterator[bytes]
    length: str | None = None
    signed: bool = True


@dataclass(frozen=True)
class Download:
    """An image's file to send: the image as the API shows it and the bytes ``offset`` to
    ``offset + length`` of its file (``partial``: a range was asked)."""

    image: dict[str, Any]
    store: ImageStore
    location: str
    offset: int
    length: int
    partial: bool

    def open_local(self) -> BinaryIO | None:
        """The file as an open local file, if its store has one (to send with sendfile)."""
        return self.store.open_local(self.location)

    def chunks(self) -> Iterator[bytes]:
        """The bytes, streamed from the store."""
        return self.store.open(self.location, self.offset, self.length)


# -- register and change -------------------------------------------------------------------


async def add_image(
    svc: Services,
    who: Principal,
    fields: dict[str, Any],
    others: dict[str, Any],
    declared: dict[str, str],
    *,
    upload: Upload | None = None,
    base: str = "",
) -> dict[str, Any]:
    """Register an image from its metadata, with its file (``upload``), or a ``location``
    in ``fields`` (an http store), or neither (``locked``). ``base``: the API's address,
    for the image's links."""
    location = fields.get("location")
    if upload is not None and location:
        raise InvalidRequest("give the image's file or its location, not both")
    fields.setdefault("store", "http" if location else svc.settings.images.default_store)
    store = pick(svc.stores, fields["store"])
    if upload is not None and not store.capabilities.writable:
        raise InvalidRequest(f"the {store.name} store is read-only: upload to another store")
    if upload is not None:
        _require_declared(upload, declared)
    size = _declared_size(upload, declared) if upload is not None else None
    if location and store.capabilities.writable:
        raise InvalidRequest(
            f"a location can only be given for a read-only store, not {store.name}"
        )
    probed = await anyio.to_thread.run_sync(_probe, svc, fields) if location else None

    allowance: list[limits.Allowance] = []

    def create(s: Session) -> tuple[str, dict[str, Any]]:
        # The limits first: a refused file leaves no image behind.
        if probed is not None:
            _check_location(svc, s, who.user_id, probed)
        if upload is not None:
            allowance.append(
                limits.allow(s, who.user_id, store, svc.settings.images.max_size_bytes, size)
            )
        row = service.register(s, who, fields, others, svc.settings.images.default_access)
        if probed is not None:
            image = service.finish_upload(s, who, row.id, probed, probed.checksum, None, declared)
            return image.id, service.describe(image, base)
        if upload is not None:
            image = service.get_image(s, row.id, who)
            service.begin_upload(s, who, image, WRITER)
            image.upload_size = allowance[-1].size
            s.flush()
            row = service.image_row(s, row.id, who)
        return row.id, service.describe(row, base)

    image_id, described = await svc.db.batched(create)
    if upload is not None:
        described = await _receive(svc, who, image_id, store, upload, declared, allowance[-1], base)
    return described


async def update_image(
    svc: Services,
    who: Principal,
    ref: str,
    fields: dict[str, Any],
    others: dict[str, Any],
    declared: dict[str, str],
    *,
    upload: Upload | None = None,
    base: str = "",
) -> dict[str, Any]:
    """Change metadata and/or give a ``locked`` or ``error`` image (``ref``: its id or name)
    its file (``upload``) or its ``location`` (in ``fields``; read-only stores)."""
    location = fields.get("location")
    if upload is not None and location:
        raise InvalidRequest("give the image's file or its location, not both")
    if upload is not None:
        _require_declared(upload, declared)
    size = _declared_size(upload, declared) if upload is not None else None
    if not (fields or others or upload is not None):
        raise InvalidRequest("nothing to do: give metadata headers, a file or a location")

    allowance: list[limits.Allowance] = []
    before: list[tuple[str, str | None]] = []

    def change(s: Session) -> tuple[str, dict[str, Any]]:
        if fields.keys() - {"location"} or others:
            row = service.update(s, who, ref, fields, others)
        else:
            row = service.image_row(s, ref, who)
        image_id = row.id
        if not (upload is not None or location):
            return row.store, service.describe(row, base)
        store = pick(svc.stores, row.store)
        if store.capabilities.writable == bool(location):
            raise InvalidRequest(
                f"the {store.name} store is read-only: upload to another store"
                if upload is not None
                else "a location can only be given for a read-only store"
            )
        image = service.get_image(s, image_id, who)
        before.append((image.status, image.error))
        if upload is not None:
            allowance.append(_claim(svc, s, who, image, store, size))
        else:
            service.begin_upload(s, who, image, WRITER)
        return image.store, service.describe(image, base)

    store_name, described = await svc.db.batched(change)
    image_id = str(described["id"])
    store = svc.stores[store_name]
    if upload is not None:
        described = await _receive(svc, who, image_id, store, upload, declared, allowance[-1], base)
    elif location:

        def assign() -> dict[str, Any]:
            probed = store.probe(location)
            with svc.db.write() as s:
                image = service.get_image(s, image_id, who)
                _check_location(svc, s, image.owner, probed)
                image = service.finish_upload(
                    s, who, image_id, probed, probed.checksum, None, declared
                )
                return service.describe(image, base)

        try:
            described = await anyio.to_thread.run_sync(assign)
        except LaminaError:
            # Refused (too large, over quota, or the location failed): the image is as it was.
            await anyio.to_thread.run_sync(_unclaim, svc, image_id, *before[-1])
            raise
    return described


def delete_image(svc: Services, who: Principal, ref: str, base: str = "") -> dict[str, Any]:
    """Remove the image ``ref`` (id or name): metadata and file; the removed metadata (to
    register it again)."""
    with svc.db.write() as s:
        image = service.get_image(s, ref, who)
        image_id = image.id
        described = service.describe(image, base)
        where = service.delete(s, who, image)
    store = svc.stores.get(where["store"])
    if store is not None and where["location"] and store.capabilities.writable:
        try:
            store.delete(where["location"])
        except LaminaError as exc:
            log.warning("image %s: its file could not be removed: %s", image_id, exc.message)
    return described


# -- read ----------------------------------------------------------------------------------


def list_brief(
    svc: Services,
    who: Principal,
    *,
    filters: dict[str, str],
    sort: str = "created_at",
    direction: str = "asc",
    limit: int = 1000,
    marker: str | None = None,
) -> bytes:
    """Brief metadata of the images ``who`` may see, filtered by any attribute, as the JSON
    document the database builds (the repository's hottest read: cheap enough for the event
    loop). ``NotFound`` when nothing matches a first page (VISOR table 4.3)."""
    with svc.db.read() as s:
        body = service.brief_listing(
            s, who, filters=filters, sort=sort, direction=direction, limit=limit, marker=marker
        )
    if body is None:
        if marker is None:
            raise NotFound("no images were found", filters=filters)  # VISOR table 4.3
        body = b'{"images":[]}'
    return body


def list_detail(
    svc: Services,
    who: Principal,
    *,
    filters: dict[str, str],
    sort: str = "created_at",
    direction: str = "asc",
    limit: int = 1000,
    marker: str | None = None,
    base: str = "",
) -> list[dict[str, Any]]:
    """Full metadata of the images ``who`` may see; the same filters as ``list_brief``."""
    with svc.db.read() as s:
        found = service.list_images(
            s, who, filters=filters, sort=sort, direction=direction, limit=limit, marker=marker
        )
        if not found and marker is None:
            raise NotFound("no images were found", filters=filters)  # VISOR table 4.3
        return [service.describe(i, base, viewer=who) for i in found]


def statistics(svc: Services, who: Principal) -> dict[str, Any]:
    """Counts per store, format, architecture and status; most used; never used."""
    with svc.db.read() as s:
        return service.statistics(s, who)


def show_image(svc: Services, who: Principal, ref: str, base: str = "") -> dict[str, Any]:
    """One image's metadata, by id or name (a read of one row: cheap enough for the event
    loop)."""
    with svc.db.read() as s:
        row = service.image_row(s, ref, who)
        return service.describe(row, base, viewer=who)


def image_history(svc: Services, who: Principal, ref: str) -> list[dict[str, Any]]:
    """What was done to an image (id or name), oldest first."""
    with svc.db.read() as s:
        image = service.get_image(s, ref, who)
        return service.history(s, who, image)


def download(
    svc: Services, who: Principal, ref: str, range_: str | None = None, base: str = ""
) -> Download:
    """An available image's file (``ref``: id or name), whole or the single byte range
    ``range_`` (a ``Range`` header's value; outside the file: 416), counted as one more
    download."""
    with svc.db.write() as s:
        image = service.get_image(s, ref, who)
        if image.status != "available" or not image.location or image.size is None:
            raise NotFound(f"image {image.id} has no file (it is {image.status})")
        span = parse_range(range_, image.size)
        service.touch(s, image)
        described = service.describe(image, base, viewer=who)
    store = pick(svc.stores, str(described["store"]))
    offset, length = span or (0, int(described["size"]))
    return Download(described, store, str(described["location"]), offset, length, span is not None)


# -- resumable uploads ---------------------------------------------------------------------


def start_resumable(
    svc: Services, who: Principal, ref: str, size: int, sha256: str
) -> dict[str, Any]:
    """Begin a resumable upload of a ``locked`` or ``error`` image (id or name) of ``size``
    bytes and this SHA-256; parts follow with ``upload_part``. The upload's state."""
    with svc.db.write() as s:
        image = service.get_image(s, ref, who)
        store = pick(svc.stores, image.store)
        if not store.capabilities.writable:
            raise InvalidRequest(f"the {image.store} store is read-only: upload to another store")
        limits.allow(s, image.owner, store, svc.settings.images.max_size_bytes, size, _staging(svc))
        service.begin_upload(s, who, image, resumable.RESUMABLE)
        image.upload_size, image.upload_sha256 = size, sha256
        resumable.discard(_staging(svc), image.id)
        return _upload_state(svc, image)


def resumable_state(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    """How much of a resumable upload of image ``ref`` (id or name) the server has:
    continue from ``offset``."""
    with svc.db.read() as s:
        return _upload_state(svc, service.get_image(s, ref, who, "own"))


async def upload_part(
    svc: Services,
    who: Principal,
    ref: str,
    offset: int,
    blocks: AsyncIterator[bytes],
    base: str = "",
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Append ``blocks`` at ``offset`` (the bytes already sent) to the upload of image
    ``ref`` (id or name); the upload's state and, after the last part, the image:
    available, or error if the whole does not match the declared size and SHA-256."""

    def load() -> tuple[str, int, str, str]:
        with svc.db.write() as s:
            image = service.get_image(s, ref, who, "own")
            size, sha256 = resumable.check_open(image)
            image.upload_seen = utcnow()
            return image.id, size, sha256, image.store

    # The staging file is named by the id, never by what the caller wrote.
    image_id, size, sha256, store_name = await anyio.to_thread.run_sync(load)
    root = _staging(svc)
    done = await anyio.to_thread.run_sync(
        resumable.append, root, image_id, offset, size, body_blocks(blocks)
    )
    state = {"offset": done, "size": size, "sha256": sha256}
    if done < size:
        return state, None
    store = pick(svc.stores, store_name)

    def finish() -> dict[str, Any]:
        staged = resumable.staging_path(root, image_id)
        declared = {"sha256": sha256, "size": str(size)}
        try:
            image = service.store_file(
                svc.db, store, who, image_id, service.file_chunks(staged), declared
            )
        finally:
            resumable.discard(root, image_id)
        return service.describe(image, base)

    return state, await anyio.to_thread.run_sync(finish)


def cancel_resumable(svc: Services, who: Principal, ref: str) -> None:
    """Give up a resumable upload of image ``ref`` (id or name): the staged bytes go, the
    image turns to ``error``."""
    with svc.db.write() as s:
        image = service.get_image(s, ref, who, "own")
        image_id = image.id
        resumable.check_open(image)
        service.fail_upload(s, image_id, "upload cancelled")
    resumable.discard(_staging(svc), image_id)


# -- the steps -----------------------------------------------------------------------------


async def _receive(
    svc: Services,
    who: Principal,
    image_id: str,
    store: ImageStore,
    upload: Upload,
    declared: dict[str, str],
    allowance: limits.Allowance,
    base: str,
) -> dict[str, Any]:
    """Stream the upload into ``store`` as image ``image_id`` (already claimed), cut off as
    soon as it brings more than ``allowance``."""

    def heartbeat() -> None:
        with svc.db.write() as s:
            image = s.get(Image, image_id)
            if image is not None:
                image.upload_seen = utcnow()

    image = await anyio.to_thread.run_sync(
        service.store_file,
        svc.db,
        store,
        who,
        image_id,
        limits.limited(body_blocks(upload.blocks, heartbeat), allowance),
        declared,
    )
    return service.describe(image, base)


def _require_declared(upload: Upload, declared: dict[str, str]) -> None:
    """An unsigned file is trusted only through the checksum its sender declares."""
    if not upload.signed and not (declared.get("sha256") or declared.get("checksum")):
        raise InvalidRequest(
            f"an {UNSIGNED} upload must declare X-Image-Meta-Sha256 (or X-Image-Meta-Checksum):"
            " it is what keeps the file from being changed on the way"
        )


def _declared_size(upload: Upload, declared: dict[str, str]) -> int | None:
    return limits.declared_size(upload.length, declared.get("size"))


def _claim(
    svc: Services, s: Session, who: Principal, image: Image, store: ImageStore, size: int | None
) -> limits.Allowance:
    """Check a file of ``size`` bytes for ``image`` against the limits, then claim the image
    for the upload, reserving what it may bring."""
    allowance = limits.allow(s, image.owner, store, svc.settings.images.max_size_bytes, size)
    service.begin_upload(s, who, image, WRITER)
    image.upload_size = allowance.size
    return allowance


def _unclaim(svc: Services, image_id: str, status: str, error: str | None) -> None:
    with svc.db.write() as s:
        service.release_claim(s, image_id, status, error)


def _check_location(svc: Services, s: Session, owner: str | None, probed: StoredObject) -> None:
    http = pick(svc.stores, "http")
    limits.allow(s, owner, http, svc.settings.images.max_size_bytes, probed.size)


def _probe(svc: Services, fields: dict[str, Any]) -> StoredObject:
    store = pick(svc.stores, fields["store"])
    return store.probe(fields["location"])


def _staging(svc: Services) -> Path:
    """Where resumable uploads stage their bytes."""
    return svc.settings.data_dir.resolve() / "uploads"


def _upload_state(svc: Services, image: Image) -> dict[str, Any]:
    size, sha256 = resumable.check_open(image)
    return {"offset": resumable.received(_staging(svc), image.id), "size": size, "sha256": sha256}
