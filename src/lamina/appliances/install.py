"""Installing appliances from channels into the image repository, as a persisted job, and
removing them.

``start_install`` resolves what to install (``resolve``: definitions only, before any
download), records the appliances as ``installing`` and submits an ``appliance.install`` job:

1. ``download``: each file, content-addressed: an ``available`` image with its SHA-256 is
   reused; otherwise the file is fetched from its mirrors into ``<data_dir>/downloads`` (an
   interrupted download resumes from there), verified (signature, SHA-256, size), and only
   then stored as a new image through the images domain. Undo removes the images this job
   made, unless another appliance uses them.
2. ``activate``: the appliances become ``installed`` with their images.

A failure rolls back and removes the job's appliance records: nothing stays half-installed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lamina.appliances.catalog import find_installed, unknown
from lamina.appliances.models import InstalledAppliance
from lamina.appliances.resolve import Planned, Resolver
from lamina.channels.feed import FileRef
from lamina.channels.mirrors import MirrorsFailed
from lamina.channels.service import http_client
from lamina.channels.signing import parse_public_key
from lamina.channels.verify import fetch_verified
from lamina.compute.models import Instance
from lamina.db.types import new_id, utcnow
from lamina.errors import (
    Conflict,
    InvalidRequest,
    InvalidState,
    LaminaError,
    NotFound,
    VerificationFailed,
)
from lamina.formats.layerfs import check_layer
from lamina.identity.accounts import require_admin
from lamina.identity.principal import Principal
from lamina.images import limits
from lamina.images import service as images
from lamina.images.models import Image
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.jobs.runner import machine_boot
from lamina.jobs.service import submit
from lamina.jobs.views import describe_job
from lamina.stores import pick

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)
KIND = "appliance.install"
#: The image type of each role of file.
IMAGE_TYPES = {"layer": "layer", "image": "machine", "kernel": "kernel", "initrd": "ramdisk"}
WRITER = f"{machine_boot()}:{os.getpid()}:install"


def describe(row: InstalledAppliance) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "kind": row.kind,
        "channel": row.channel_id,
        "status": row.status,
        "error": row.error,
        "images": row.images,
        "job": row.job_id,
        "created_at": row.created_at,
    }


def start_install(
    svc: Services, who: Principal, name: str, version: str | None = None
) -> dict[str, Any]:
    """Resolve ``name`` (and its requirements), record them ``installing`` and submit the
    job. NotFound if no channel has it; Conflict for a missing requirement, a cycle, or an
    appliance already installed; VerificationFailed for a definition its key does not vouch
    for. Administrators only."""
    require_admin(who)
    with http_client(svc) as client:
        resolver = Resolver(svc, client)
        try:
            resolver.find(name, version)
        except NotFound:
            with svc.db.read() as s:
                raise unknown(s, name, version) from None
        plan = resolver.plan(name, version)
    entries = [_entry(p) for p in plan]
    params = {"owner": who.user_id, "access_key": who.access_key, "appliances": entries}
    with svc.db.write() as s:
        check_sizes(s, svc, who, entries)
        job = submit(
            s,
            svc.jobs.get(KIND),
            params,
            target_type="appliance",
            target_id=entries[-1]["id"],
            target_name=plan[-1].appliance.name,
            owner=who.user_id,
        )
        rows = [
            InstalledAppliance(
                id=entry["id"],
                name=p.appliance.name,
                version=str(p.appliance.version),
                kind=p.appliance.kind,
                channel_id=p.offer.channel_id,
                definition=p.definition,
                status="installing",
                images=[],
                job_id=job.id,
                created_at=utcnow(),
            )
            for p, entry in zip(plan, entries, strict=True)
        ]
        s.add_all(rows)
        try:
            s.flush()
        except IntegrityError:
            # Another install of one of them began since the plan was made.
            raise Conflict(
                f"{name} (or an appliance it needs) is being installed already", appliance=name
            ) from None
        answer = {"job": describe_job(job), "appliances": [describe(r) for r in rows]}
    svc.wake_jobs()
    return answer


def check_sizes(
    session: Session, svc: Services, who: Principal, entries: list[dict[str, Any]]
) -> None:
    """The files the install would copy into the repository (those not there already) must
    fit the limits of ``lamina.images.limits``: refused before the job starts."""
    sizes = {
        f["sha256"]: int(f["size"])
        for entry in entries
        for f in entry["files"]
        if _available(session, f["sha256"]) is None
    }
    store = pick(svc.stores, svc.settings.images.default_store)
    limits.allow_files(
        session, who.user_id, store, svc.settings.images.max_size_bytes, list(sizes.values())
    )


def _entry(planned: Planned) -> dict[str, Any]:
    files = [asdict(ref) for ref in planned.offer.item.files]
    return {"id": new_id(), "key": planned.offer.key, "files": files}


def _ref(data: dict[str, Any]) -> FileRef:
    return FileRef(**{**data, "urls": tuple(data["urls"])})


def _who(ctx: StepContext) -> Principal:
    return Principal(ctx.params["owner"], ctx.params["access_key"], "admin")


def _downloads(svc: Services) -> Path:
    path = svc.settings.data_dir.resolve() / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _available(session: Session, sha256: str) -> str | None:
    query = select(Image.id).where(Image.sha256 == sha256, Image.status == "available")
    return session.scalar(query.order_by(Image.created_at).limit(1))


def _ours(session: Session, job_id: str) -> list[Image]:
    query = select(Image).where(Image.others["install_job"].as_string() == job_id)
    return list(session.scalars(query))


# -- step 1: download ---------------------------------------------------------------------


def download_files(ctx: StepContext) -> None:
    """Give every file of every appliance of the job an available image."""
    svc: Services = ctx.services
    entries = ctx.params["appliances"]
    total = sum(f["size"] for e in entries for f in e["files"]) or 1
    done = 0
    started = time.monotonic()
    with http_client(svc) as client:
        for entry in entries:
            ids = []
            for data in entry["files"]:
                ref = _ref(data)

                def progress(got: int, _: int, before: int = done) -> None:
                    rate = (before + got) / max(time.monotonic() - started, 1e-3)
                    ctx.report(
                        fraction=(before + got) / total * 0.95,
                        bytes_done=before + got,
                        bytes_total=total,
                        rate=rate,
                    )

                ids.append(_image_for(ctx, entry["key"], ref, client, progress))
                done += ref.size
            ctx.state.setdefault("images", {})[entry["id"]] = ids


def _image_for(ctx: StepContext, key: str, ref: FileRef, client: Any, progress: Any) -> str:
    svc: Services = ctx.services
    with svc.db.read() as s:
        existing = _available(s, ref.sha256)
    if existing is not None:
        log.info("job %s: %s %s is image %s already", ctx.job_id, ref.role, ref.sha256, existing)
        return existing
    part = _downloads(svc) / f"{ctx.job_id}-{ref.sha256}.part"
    start = part.stat().st_size if part.exists() else 0
    with part.open("r+b" if part.exists() else "w+b") as sink:
        try:
            fetch_verified(
                parse_public_key(key), ref, sink, start=start, client=client, progress=progress
            )
        except MirrorsFailed as exc:
            if all(reason.startswith("wrong ") for _, reason in exc.failures):
                raise VerificationFailed(
                    f"{ref.role} {ref.sha256}: every mirror served bytes that are not the "
                    f"signed file; refusing them (tampered or corrupted): {exc.message}",
                    sha256=ref.sha256,
                ) from None
            raise
    if ref.role == "layer":
        try:
            check_layer(part, ref.format, f"layer {ref.sha256} (signed by the channel)")
        except InvalidRequest:
            part.unlink(missing_ok=True)
            raise
    image_id = _store(ctx, ref, part)
    part.unlink(missing_ok=True)
    return image_id


def _store(ctx: StepContext, ref: FileRef, part: Path) -> str:
    """Register the verified file as an image (or reuse this job's unfinished one) and
    stream it into the store through the images domain."""
    svc: Services = ctx.services
    who = _who(ctx)
    store_name = svc.settings.images.default_store
    with svc.db.write() as s:
        mine = [i for i in _ours(s, ctx.job_id) if i.others.get("sha256") == ref.sha256]
        if mine and mine[0].status == "uploading":
            images.fail_upload(s, mine[0].id, "interrupted; stored again")
        if mine:
            image_id = mine[0].id
        else:
            fields = {
                "name": f"{ref.role}-{ref.sha256[:12]}",
                "type": IMAGE_TYPES[ref.role],
                "format": ref.format,
                "store": store_name,
            }
            others = {"install_job": ctx.job_id, "sha256": ref.sha256}
            # Public: an installed appliance is there for every member to deploy, and a
            # deploy reads its layers as the member (images.default_access is for uploads).
            row = images.register(s, who, fields, others, "public")
            image_id = row.id
        images.begin_upload(s, who, images.get_image(s, image_id, who), WRITER)
    store = pick(svc.stores, store_name)
    declared = {"sha256": ref.sha256, "size": str(ref.size)}
    images.store_file(svc.db, store, who, image_id, images.file_chunks(part), declared)
    return image_id


def remove_new_images(ctx: StepContext) -> None:
    """Undo: the images this job made, unless an installed appliance uses them; its
    partial downloads."""
    svc: Services = ctx.services
    with svc.db.write() as s:
        used = _used_images(s, exclude_job=ctx.job_id)
        gone = []
        for image in _ours(s, ctx.job_id):
            if image.id in used or image.status == "uploading":
                continue
            gone.append(images.delete(s, _who(ctx), image))
    _delete_files(svc, gone)
    for part in _downloads(svc).glob(f"{ctx.job_id}-*.part"):
        part.unlink(missing_ok=True)


def _used_images(session: Session, exclude_job: str | None = None) -> set[str]:
    rows = session.scalars(select(InstalledAppliance))
    return {
        i for row in rows if exclude_job is None or row.job_id != exclude_job for i in row.images
    }


def _delete_files(svc: Services, where: list[dict[str, Any]]) -> None:
    for item in where:
        store = svc.stores.get(item["store"])
        if store is None or not item["location"] or not store.capabilities.writable:
            continue
        try:
            store.delete(item["location"])
        except LaminaError as exc:
            log.warning("could not remove %s: %s", item["location"], exc.message)


# -- step 2: activate ---------------------------------------------------------------------


def activate(ctx: StepContext) -> None:
    svc: Services = ctx.services
    with svc.db.write() as s:
        for entry in ctx.params["appliances"]:
            row = s.get(InstalledAppliance, entry["id"])
            if row is None:
                raise NotFound(f"appliance {entry['id']} vanished during its install")
            row.images = ctx.state["images"][entry["id"]]
            row.status = "installed"
    ctx.report(fraction=1.0)


def forget_appliances(ctx: StepContext, error: str) -> None:
    """After a failure: the job's appliance records go (the job keeps the error)."""
    svc: Services = ctx.services
    with svc.db.write() as s:
        for row in s.scalars(
            select(InstalledAppliance).where(InstalledAppliance.job_id == ctx.job_id)
        ):
            s.delete(row)
    log.warning("job %s: install failed, nothing kept: %s", ctx.job_id, error)


def register_appliance_jobs(registry: JobRegistry) -> None:
    registry.register(
        JobKind(
            KIND,
            (
                Step("download", download_files, remove_new_images, timeout=6 * 3600),
                Step("activate", activate),
            ),
            deadline=6 * 3600,
            on_failure=forget_appliances,
        )
    )


# -- remove -------------------------------------------------------------------------------


def remove_appliance(
    svc: Services, who: Principal, ref: str, version: str | None = None
) -> dict[str, Any]:
    """Remove an installed appliance (id, or name and, when several versions are installed,
    ``version``: else ``Ambiguous``) and the images no other appliance uses. NotFound (no
    such appliance, or not installed); InvalidState while it is installing; Conflict while
    an instance uses one of its images. Administrators only."""
    require_admin(who)
    with svc.db.write() as s:
        row = find_installed(s, ref, version, newest=False)
        if row.status == "installing":
            raise InvalidState(f"appliance {row.name} is being installed (job {row.job_id})")
        users = _instances_using(s, row.images)
        deployed = select(Instance.name).where(
            Instance.appliance_id == row.id, Instance.status != "deleted"
        )
        users = sorted({*users, *s.scalars(deployed)})
        if users:
            raise Conflict(
                f"appliance {row.name} {row.version} is used by instances {', '.join(users)}",
                instances=users,
            )
        described = describe(row)
        s.delete(row)
        s.flush()
        used = _used_images(s)
        gone = []
        for image_id in row.images:
            image = s.get(Image, image_id)
            if image is not None and image_id not in used:
                gone.append(images.delete(s, who, image))
    _delete_files(svc, gone)
    return described


def _instances_using(session: Session, image_ids: list[str]) -> list[str]:
    """Names of the live instances that boot from one of these images (by id in their
    kernel, initrd or disk image reference, or among their layers)."""
    if not image_ids:
        return []
    live = session.scalars(select(Instance).where(Instance.status != "deleted"))
    return [
        i.name
        for i in live
        if any(
            ref and any(image in ref for image in image_ids)
            for ref in (i.kernel, i.initrd, i.disk_image)
        )
        or any(layer["image"] in image_ids for layer in i.layers or [])
    ]
