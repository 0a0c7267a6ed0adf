"""``/images``: VISOR's image API (table 4.2) over the images domain."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from lamina.api.auth import principal, streamed_upload
from lamina.api.deps import caller, services
from lamina.api.responses import json_response
from lamina.api.zerocopy import EXTENSION as ZERO_COPY
from lamina.api.zerocopy import ZeroCopyFileResponse
from lamina.db.types import utcnow
from lamina.errors import InvalidRequest, LaminaError, NotFound
from lamina.identity.principal import Principal
from lamina.identity.signing import BODY_HEADER, UNSIGNED
from lamina.images import limits, meta, resumable, service
from lamina.images.transfer import body_blocks, parse_range
from lamina.jobs.runner import machine_boot
from lamina.services import Services
from lamina.stores import pick
from lamina.stores.base import ImageStore, StoredObject

log = logging.getLogger(__name__)
images = APIRouter(prefix="/images", tags=["images"])
WRITER = f"{machine_boot()}:{os.getpid()}:upload"
RESERVED_QUERY = ("sort", "dir", "limit", "marker")


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _meta_headers(data: dict[str, Any]) -> dict[str, str]:
    """Metadata as VISOR's headers; times in ISO 8601, as in the JSON answers."""
    return {
        f"X-Image-Meta-{key}": value.isoformat() if isinstance(value, datetime) else str(value)
        for key, value in data.items()
        if value is not None
    }


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return bool(request.headers.get("transfer-encoding") or (length and length != "0"))


async def _upload(
    svc: Services,
    request: Request,
    who: Principal,
    image_id: str,
    store: ImageStore,
    declared: dict[str, str],
    allowance: limits.Allowance,
) -> dict[str, Any]:
    """Stream the request body into ``store`` as image ``image_id`` (already claimed), cut
    off as soon as it brings more than ``allowance``."""

    def heartbeat() -> None:
        from lamina.db.types import utcnow
        from lamina.images.models import Image

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
        limits.limited(body_blocks(request.stream().__aiter__(), heartbeat), allowance),
        declared,
    )
    return service.describe(image, _base(request))


def _require_declared(request: Request, declared: dict[str, str]) -> None:
    """An unsigned body is trusted only through the checksum its client declares."""
    if request.headers.get(BODY_HEADER.lower()) == UNSIGNED and not (
        declared.get("sha256") or declared.get("checksum")
    ):
        raise InvalidRequest(
            f"an {UNSIGNED} upload must declare X-Image-Meta-Sha256 (or X-Image-Meta-Checksum):"
            " it is what keeps the file from being changed on the way"
        )


def _declared_size(request: Request, declared: dict[str, str]) -> int | None:
    return limits.declared_size(request.headers.get("content-length"), declared.get("size"))


def _claim(
    svc: Services, s: Session, who: Principal, image: Any, store: ImageStore, size: int | None
) -> limits.Allowance:
    """Check a file of ``size`` bytes for ``image`` against the limits, then claim the image
    for the upload, reserving what it may bring."""
    allowance = limits.allow(s, image.owner, store, svc.settings.images.max_size_bytes, size)
    service.begin_upload(s, who, image, WRITER)
    image.upload_size = allowance.size
    return allowance


def _check_location(svc: Services, s: Session, owner: str | None, probed: StoredObject) -> None:
    http = pick(svc.stores, "http")
    limits.allow(s, owner, http, svc.settings.images.max_size_bytes, probed.size)


def _probe(svc: Services, fields: dict[str, Any]) -> StoredObject:
    store = pick(svc.stores, fields["store"])
    return store.probe(fields["location"])


@images.post("", status_code=201)
@streamed_upload
async def add_image(request: Request) -> Any:
    """Register an image from ``X-Image-Meta-*`` headers, with its file in the body, or a
    ``location`` (an http store), or neither (``locked``)."""
    svc, who = caller(request)
    fields, others, declared = meta.split(meta.from_headers(request.headers))
    with_file, location = _has_body(request), fields.get("location")
    if with_file and location:
        raise InvalidRequest("give the image's file or its location, not both")
    fields.setdefault("store", "http" if location else svc.settings.images.default_store)
    store = pick(svc.stores, fields["store"])
    if with_file and not store.capabilities.writable:
        raise InvalidRequest(f"the {store.name} store is read-only: upload to another store")
    if with_file:
        _require_declared(request, declared)
    size = _declared_size(request, declared) if with_file else None
    if location and store.capabilities.writable:
        raise InvalidRequest(
            f"a location can only be given for a read-only store, not {store.name}"
        )
    probed = await run_in_threadpool(_probe, svc, fields) if location else None

    allowance: list[limits.Allowance] = []

    def create(s: Session) -> tuple[str, dict[str, Any]]:
        # The limits first: a refused file leaves no image behind.
        if probed is not None:
            _check_location(svc, s, who.user_id, probed)
        if with_file:
            allowance.append(
                limits.allow(s, who.user_id, store, svc.settings.images.max_size_bytes, size)
            )
        row = service.register(s, who, fields, others, svc.settings.images.default_access)
        if probed is not None:
            image = service.finish_upload(s, who, row.id, probed, probed.checksum, None, declared)
            return image.id, service.describe(image, _base(request))
        if with_file:
            image = service.get_image(s, row.id, who)
            service.begin_upload(s, who, image, WRITER)
            image.upload_size = allowance[-1].size
            s.flush()
            row = service.image_row(s, row.id, who)
        return row.id, service.describe(row, _base(request))

    image_id, described = await svc.db.batched(create)
    if with_file:
        described = await _upload(svc, request, who, image_id, store, declared, allowance[-1])
    return json_response({"image": described}, status_code=201)


@images.put("/{image_id}")
@streamed_upload
async def update_image(image_id: str, request: Request) -> Any:
    """Change metadata and/or give a ``locked`` or ``error`` image its file."""
    svc, who = caller(request)
    fields, others, declared = meta.split(meta.from_headers(request.headers))
    with_file, location = _has_body(request), fields.get("location")
    if with_file and location:
        raise InvalidRequest("give the image's file or its location, not both")
    if with_file:
        _require_declared(request, declared)
    size = _declared_size(request, declared) if with_file else None
    if not (fields or others or with_file):
        raise InvalidRequest("nothing to do: give metadata headers, a file or a location")

    allowance: list[limits.Allowance] = []
    before: list[tuple[str, str | None]] = []

    def change(s: Session) -> tuple[str, dict[str, Any]]:
        if fields.keys() - {"location"} or others:
            row = service.update(s, who, image_id, fields, others)
        else:
            row = service.image_row(s, image_id, who)
        if not (with_file or location):
            return row.store, service.describe(row, _base(request))
        store = pick(svc.stores, row.store)
        if store.capabilities.writable == bool(location):
            raise InvalidRequest(
                f"the {store.name} store is read-only: upload to another store"
                if with_file
                else "a location can only be given for a read-only store"
            )
        image = service.get_image(s, image_id, who)
        before.append((image.status, image.error))
        if with_file:
            allowance.append(_claim(svc, s, who, image, store, size))
        else:
            service.begin_upload(s, who, image, WRITER)
        return image.store, service.describe(image, _base(request))

    store_name, described = await svc.db.batched(change)
    store = svc.stores[store_name]
    if with_file:
        described = await _upload(svc, request, who, image_id, store, declared, allowance[-1])
    elif location:

        def assign() -> dict[str, Any]:
            probed = store.probe(location)
            with svc.db.write() as s:
                image = service.get_image(s, image_id, who)
                _check_location(svc, s, image.owner, probed)
                image = service.finish_upload(
                    s, who, image_id, probed, probed.checksum, None, declared
                )
                return service.describe(image, _base(request))

        try:
            described = await run_in_threadpool(assign)
        except LaminaError:
            # Refused (too large, over quota, or the location failed): the image is as it was.
            await run_in_threadpool(_unclaim, svc, image_id, *before[-1])
            raise
    return json_response({"image": described})


@images.get("")
async def list_brief(
    request: Request,
    sort: str = "created_at",
    dir: str = "asc",
    limit: int = Query(1000, ge=1, le=10000),
    marker: str | None = None,
) -> Any:
    """Brief metadata of the images the caller may see; filter by any attribute. The
    database builds the document (the repository's hottest read)."""
    svc, who = caller(request)
    filters = _filters(request)
    with svc.db.read() as s:
        body = service.brief_listing(
            s, who, filters=filters, sort=sort, direction=dir, limit=limit, marker=marker
        )
    if body is None:
        if marker is None:
            raise NotFound("no images were found", filters=filters)  # VISOR table 4.3
        body = b'{"images":[]}'
    return Response(body, media_type="application/json")


@images.get("/detail")
def list_detail(
    request: Request,
    sort: str = "created_at",
    dir: str = "asc",
    limit: int = Query(1000, ge=1, le=10000),
    marker: str | None = None,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Full metadata of the images the caller may see; the same filters as the brief list."""
    filters = _filters(request)
    with svc.db.read() as s:
        found = service.list_images(
            s, who, filters=filters, sort=sort, direction=dir, limit=limit, marker=marker
        )
        if not found and marker is None:
            raise NotFound("no images were found", filters=filters)  # VISOR table 4.3
        return {"images": [service.describe(i, _base(request), viewer=who) for i in found]}


def _filters(request: Request) -> dict[str, str]:
    """Every query parameter but the listing's own is a filter on an attribute."""
    return {k: v for k, v in request.query_params.items() if k not in RESERVED_QUERY}


@images.get("/stats")
def image_statistics(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    """Counts per store, format, architecture and status; most used; never used."""
    with svc.db.read() as s:
        return {"stats": service.statistics(s, who)}


@images.head("/{image_id}")
async def head_image(image_id: str, request: Request) -> Response:
    """The image's metadata as ``X-Image-Meta-*`` headers, no body."""
    svc, who = caller(request)
    with svc.db.read() as s:
        row = service.image_row(s, image_id, who)
        described = service.describe(row, _base(request), viewer=who)
    return Response(headers=_meta_headers(described))


@images.get("/{image_id}/history")
def image_history(
    image_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        image = service.get_image(s, image_id, who)
        return {"history": service.history(s, who, image)}


@images.get("/{image_id}")
def get_image(
    image_id: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Response:
    """The file, streamed, with the metadata in headers; honours ``Range``."""
    with svc.db.write() as s:
        image = service.get_image(s, image_id, who)
        if image.status != "available" or not image.location or image.size is None:
            raise NotFound(f"image {image_id} has no file (it is {image.status})")
        span = parse_range(request.headers.get("range"), image.size)
        service.touch(s, image)
        described = service.describe(image, _base(request), viewer=who)
    store = pick(svc.stores, str(described["store"]))
    location = str(described["location"])
    offset, length = span or (0, int(described["size"]))
    headers = {**_meta_headers(described), "Accept-Ranges": "bytes", "Content-Length": str(length)}
    if described.get("sha256"):
        headers["ETag"] = f'"{described["sha256"]}"'
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{described['size']}"
    kind = "application/octet-stream"
    if ZERO_COPY in request.scope.get("extensions", {}):
        local = store.open_local(location)
        if local is not None:
            return ZeroCopyFileResponse(
                local, offset, length, status_code=status, headers=headers, media_type=kind
            )
    chunks = store.open(location, offset, length)
    return StreamingResponse(chunks, status_code=status, headers=headers, media_type=kind)


@images.delete("/{image_id}")
def delete_image(
    image_id: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Remove the metadata and the file; answers the removed metadata (to re-post it)."""
    with svc.db.write() as s:
        image = service.get_image(s, image_id, who)
        described = service.describe(image, _base(request))
        where = service.delete(s, who, image)
    store = svc.stores.get(where["store"])
    if store is not None and where["location"] and store.capabilities.writable:
        try:
            store.delete(where["location"])
        except LaminaError as exc:
            log.warning("image %s: its file could not be removed: %s", image_id, exc.message)
    return {"image": described}


# -- resumable uploads ---------------------------------------------------------------------


def _unclaim(svc: Services, image_id: str, status: str, error: str | None) -> None:
    with svc.db.write() as s:
        service.release_claim(s, image_id, status, error)


class UploadStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=0, le=2**63 - 1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def _uploads(svc: Services) -> Path:
    return svc.settings.data_dir.resolve() / "uploads"


def _upload_state(svc: Services, image: Any) -> dict[str, Any]:
    size, sha256 = resumable.check_open(image)
    return {"offset": resumable.received(_uploads(svc), image.id), "size": size, "sha256": sha256}


@images.post("/{image_id}/upload", status_code=201)
def start_resumable(
    image_id: str,
    body: UploadStart,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Begin a resumable upload of a ``locked`` or ``error`` image: declare its size and
    SHA-256, then send parts with PATCH."""
    store_name = None
    with svc.db.write() as s:
        image = service.get_image(s, image_id, who)
        store_name = image.store
        store = pick(svc.stores, store_name)
        if not store.capabilities.writable:
            raise InvalidRequest(f"the {store_name} store is read-only: upload to another store")
        limits.allow(
            s, image.owner, store, svc.settings.images.max_size_bytes, body.size, _uploads(svc)
        )
        service.begin_upload(s, who, image, resumable.RESUMABLE)
        image.upload_size, image.upload_sha256 = body.size, body.sha256
        resumable.discard(_uploads(svc), image_id)
        return {"upload": _upload_state(svc, image)}


@images.get("/{image_id}/upload")
def resumable_state(
    image_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """How much of a resumable upload the server has: continue from ``offset``."""
    with svc.db.read() as s:
        return {"upload": _upload_state(svc, service.get_image(s, image_id, who, "own"))}


@images.patch("/{image_id}/upload")
@streamed_upload
async def upload_part(
    image_id: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Append the body at ``Upload-Offset``; the last part makes the image available (or
    error, if the whole does not match the declared size and SHA-256)."""
    try:
        offset = int(request.headers["upload-offset"])
    except (KeyError, ValueError):
        raise InvalidRequest("a part needs an Upload-Offset header (bytes already sent)") from None

    def load() -> tuple[int, str, str]:
        with svc.db.write() as s:
            image = service.get_image(s, image_id, who, "own")
            size, sha256 = resumable.check_open(image)
            image.upload_seen = utcnow()
            return size, sha256, image.store

    size, sha256, store_name = await run_in_threadpool(load)
    root = _uploads(svc)
    done = await anyio.to_thread.run_sync(
        resumable.append, root, image_id, offset, size, body_blocks(request.stream().__aiter__())
    )
    if done < size:
        return {"upload": {"offset": done, "size": size, "sha256": sha256}}
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
        return service.describe(image, _base(request))

    described = await run_in_threadpool(finish)
    return {"upload": {"offset": done, "size": size, "sha256": sha256}, "image": described}


@images.delete("/{image_id}/upload")
def cancel_resumable(
    image_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """Give up a resumable upload: the staged bytes go, the image turns to ``error``."""
    with svc.db.write() as s:
        image = service.get_image(s, image_id, who, "own")
        resumable.check_open(image)
        service.fail_upload(s, image_id, "upload cancelled")
    resumable.discard(_uploads(svc), image_id)
    return {"upload": None}
