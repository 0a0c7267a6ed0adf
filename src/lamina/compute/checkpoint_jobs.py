"""The checkpoint jobs (``lamina.compute.checkpoints`` has the use cases), step by step.

``checkpoint.create``
  1. ``save``: the instance's host saves the guest's memory and copies its instance layer
     and config disk, paused for both, into its cache (``guest_checkpoint``); the guest then
     runs on as before. Undo: the host drops those files.
  2. ``store``: each file streams from the host into the image repository: a private image
     owned by the instance's owner, in the default store. Undo: those images are removed.
  3. ``activate``: the checkpoint is ``available``.

``checkpoint.restore``
  1. ``fetch``: the restoring host caches the guest's read-only layers, kernel and initrd
     as they were when it was saved, and the checkpoint's files (from their images).
  2. ``stop_source``: moving to another host, the guest stops on its old one (the other
     domains' ``before_move`` hooks, if any, ready the new host first: networks, volumes).
  3. ``restore``: the host writes the disks back and restores the memory (``guest_restore``);
     the guest runs on from where it was saved. Undo (another host): the guest goes there.
  4. ``switch``: the instance is recorded on its new host and the old one forgets the
     guest (then the ``after_move`` hooks).

``checkpoint.delete`` removes the images, then the record; ``instance.delete`` removes every
checkpoint of the instance (``remove_checkpoints``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.compute.boot import CONFIG, UPPER, image_source, layer_serial
from lamina.compute.fetch import HostFile, install_files
from lamina.compute.lifecycle import InstanceLifecycle, lifecycle_of
from lamina.compute.models import Checkpoint, Host, Instance
from lamina.errors import BackendUnavailable, GuestNotFound, LaminaError, NotFound
from lamina.identity.principal import Principal
from lamina.identity.users import access_keys
from lamina.images import service as images
from lamina.images.models import Image
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.stores import pick
from lamina.wire.client import AgentClient
from lamina.wire.protocol import GuestCheckpoint, GuestDefinition, GuestDisk, GuestRestore

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)
#: The guest's own disks a checkpoint copies, in the order the guest has them.
DISKS = (UPPER, CONFIG)
WRITER = "checkpoint"


def _load(ctx: StepContext) -> tuple[Instance, Checkpoint]:
    with ctx.services.db.read() as s:
        instance = s.get(Instance, ctx.params["instance_id"])
        checkpoint = s.get(Checkpoint, ctx.params["checkpoint_id"])
    if instance is None:
        raise NotFound(f"instance {ctx.params['instance_id']} vanished")
    if checkpoint is None:
        raise NotFound(f"checkpoint {ctx.params['checkpoint_id']} vanished")
    return instance, checkpoint


def _agent(ctx: StepContext, host_id: str | None) -> tuple[Host, AgentClient]:
    with ctx.services.db.read() as s:
        host = s.get(Host, host_id) if host_id else None
    if host is None:
        raise NotFound(f"host {host_id} vanished")
    return host, ctx.services.agents.for_host(host)


def _owner(session: Session, owner: str | None) -> Principal:
    """The instance's owner, who owns the checkpoint's images."""
    key = access_keys(session, [owner]).get(owner or "") or owner or ""
    return Principal(owner or "", key, "member")


# -- checkpoint.create --------------------------------------------------------------------


def save(ctx: StepContext) -> None:
    instance, checkpoint = _load(ctx)
    _, agent = _agent(ctx, instance.host_id)
    files = agent.checkpoint(instance.domain_name, GuestCheckpoint(disks=list(DISKS)))
    ctx.state["host_id"] = instance.host_id
    ctx.state["files"] = {"memory": {"sha256": files.memory.sha256, "size": files.memory.size}}
    for disk, entry in files.disks.items():
        ctx.state["files"][disk] = {"sha256": entry.sha256, "size": entry.size}
    ctx.state["requires"] = files.requires.model_dump()
    ctx.state["paused_seconds"] = files.paused_seconds
    ctx.state["boot"] = {
        "kernel": instance.kernel,
        "initrd": instance.initrd,
        "cmdline": instance.cmdline,
        "layers": list(instance.layers or []),
        "vcpus": instance.vcpus,
        "memory_mib": instance.memory_mib,
    }
    ctx.report(fraction=0.3)


def drop_saved(ctx: StepContext) -> None:
    """Undo ``save``: the host forgets the files (best effort: they are only cache)."""
    if not ctx.state.get("files"):
        return
    try:
        _, agent = _agent(ctx, ctx.state.get("host_id"))
        for item in ctx.state["files"].values():
            agent.cache_remove(item["sha256"])
    except LaminaError as exc:
        log.warning("checkpoint files left in a host's cache: %s", exc.message)


def store(ctx: StepContext) -> None:
    svc: Services = ctx.services
    instance, checkpoint = _load(ctx)
    _, agent = _agent(ctx, ctx.state["host_id"])
    folder = svc.settings.data_dir.resolve() / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    stored: dict[str, str] = dict(ctx.state.get("images", {}))
    files = ctx.state["files"]
    for i, (role, item) in enumerate(files.items()):
        if role in stored:
            continue  # stored before a restart
        part = folder / f"{ctx.job_id}-{role}.part"
        with part.open("wb") as sink:
            got = agent.cache_read(item["sha256"], sink)
        if got != item["size"]:
            raise BackendUnavailable(f"the host sent {got} bytes of {role}, not {item['size']}")
        try:
            stored[role] = _store_file(ctx, instance, checkpoint, role, item, part)
        finally:
            part.unlink(missing_ok=True)
        ctx.state["images"] = dict(stored)
        ctx.report(fraction=0.3 + 0.6 * (i + 1) / len(files))


def _store_file(
    ctx: StepContext,
    instance: Instance,
    checkpoint: Checkpoint,
    role: str,
    item: dict[str, Any],
    part: Path,
) -> str:
    svc: Services = ctx.services
    store_name = svc.settings.images.default_store
    with svc.db.write() as s:
        who = _owner(s, instance.owner)
        fields = {
            "name": f"{instance.name}-{checkpoint.name}-{role}",
            "type": None,
            "format": "raw" if role == "memory" else "qcow2",
            "store": store_name,
        }
        others = {"checkpoint": checkpoint.id, "instance": instance.id, "role": role}
        row = images.register(s, who, fields, others, "private")
        image_id = str(row.id)
        images.begin_upload(s, who, images.get_image(s, image_id, who), WRITER)
    declared = {"sha256": item["sha256"], "size": str(item["size"])}
    chunks = images.file_chunks(part)
    images.store_file(svc.db, pick(svc.stores, store_name), who, image_id, chunks, declared)
    return image_id


def remove_stored(ctx: StepContext) -> None:
    """Undo ``store``: the images this checkpoint made."""
    remove_images(ctx.services, [ctx.params["checkpoint_id"]])


def activate(ctx: StepContext) -> None:
    with ctx.services.db.write() as s:
        checkpoint = s.get(Checkpoint, ctx.params["checkpoint_id"])
        if checkpoint is None:
            raise NotFound("the checkpoint was removed while it was saved")
        checkpoint.images = dict(ctx.state["images"])
        checkpoint.files = dict(ctx.state["files"])
        checkpoint.requires = dict(ctx.state["requires"])
        checkpoint.boot = dict(ctx.state["boot"])
        checkpoint.paused_seconds = ctx.state.get("paused_seconds")
        checkpoint.size_bytes = sum(int(f["size"]) for f in ctx.state["files"].values())
        checkpoint.status = "available"
        checkpoint.error = None
    ctx.report(fraction=1.0)


def mark_failed(ctx: StepContext, error: str) -> None:
    with ctx.services.db.write() as s:
        checkpoint = s.get(Checkpoint, ctx.params["checkpoint_id"])
        if checkpoint is not None:
            checkpoint.status = "error"
            checkpoint.error = error


# -- checkpoint.restore -------------------------------------------------------------------


def _moving(ctx: StepContext) -> bool:
    return bool(ctx.params["host_id"] != ctx.params.get("source_host_id"))


def checkpoint_files(session: Session, checkpoint: Checkpoint) -> list[tuple[str, str, str | None]]:
    """What a host must hold to restore ``checkpoint``, as (key, source, digest): what the
    saved guest ran (its kernel, initrd and read-only layers, as its instance recorded them)
    and the checkpoint's own files (from their images)."""
    boot = checkpoint.boot or {}
    files: list[tuple[str, str, str | None]] = [
        (key, boot[key], None) for key in ("kernel", "initrd") if boot.get(key)
    ]
    files += [(f"layer{i}", x["source"], x["sha256"]) for i, x in enumerate(boot["layers"])]
    for role, image_id in (checkpoint.images or {}).items():
        image = session.get(Image, image_id)
        if image is None:
            raise NotFound(f"image {image_id} of checkpoint {checkpoint.name} vanished")
        files.append((role, image_source(image).location, image.sha256))
    return files


def fetch(ctx: StepContext) -> None:
    """The restoring host caches the checkpoint's files and what the saved guest ran
    (nothing it holds already is fetched again)."""
    _, checkpoint = _load(ctx)
    host, agent = _agent(ctx, ctx.params["host_id"])
    with ctx.services.db.read() as s:
        files = [HostFile(*f) for f in checkpoint_files(s, checkpoint)]

    def report(**progress: Any) -> None:
        ctx.report(**{**progress, "fraction": progress["fraction"] * 0.6})

    entries = install_files(ctx.services, host, agent, files, report)
    for key, entry in entries.items():
        ctx.state[f"{key}_sha256"] = entry.sha256


def stop_source(ctx: StepContext) -> None:
    """Moving: ready the new host (the other domains' hooks), stop the guest on the old."""
    if not _moving(ctx):
        return
    instance, _ = _load(ctx)
    with ctx.services.db.read() as s:
        source = s.get(Host, ctx.params["source_host_id"] or "")
        dest = s.get(Host, ctx.params["host_id"])
    for hook in getattr(lifecycle_of(ctx.services), "before_move", []):
        hook(ctx.services, instance, source, dest)
    if source is None:
        return
    try:
        ctx.services.agents.for_host(source).act(instance.domain_name, "destroy")
    except GuestNotFound:
        pass


def restore(ctx: StepContext) -> None:
    instance, checkpoint = _load(ctx)
    _, agent = _agent(ctx, ctx.params["host_id"])
    boot = checkpoint.boot or {}
    disks = [
        GuestDisk(name=layer_serial(i), layer=x["sha256"], serial=layer_serial(i))
        for i, x in enumerate(boot.get("layers", []))
    ]
    disks.append(GuestDisk(name=UPPER, format="raw", serial=UPPER))
    disks.append(GuestDisk(name=CONFIG, format="raw", readonly=True, serial=CONFIG))
    nics_of = lifecycle_of(ctx.services).nics
    with ctx.services.db.read() as s:
        nics = nics_of(s, instance) if nics_of else []
    definition = GuestDefinition(
        vcpus=boot.get("vcpus", instance.vcpus),
        memory_mib=boot.get("memory_mib", instance.memory_mib),
        kernel=ctx.state.get("kernel_sha256"),
        initrd=ctx.state.get("initrd_sha256"),
        cmdline=boot.get("cmdline") or "",
        disks=disks,
        nics=nics,
    )
    files = checkpoint.files or {}
    status = agent.restore(
        instance.domain_name,
        GuestRestore(
            definition=definition,
            memory=files["memory"]["sha256"],
            disks={disk: files[disk]["sha256"] for disk in DISKS},
        ),
    )
    ctx.state["guest_state"] = status.state
    ctx.report(fraction=0.9)


def unrestore(ctx: StepContext) -> None:
    """Undo ``restore`` on another host: the guest goes from there."""
    if not _moving(ctx):
        return
    instance, _ = _load(ctx)
    _, agent = _agent(ctx, ctx.params["host_id"])
    agent.undefine(instance.domain_name)


def switch(ctx: StepContext) -> None:
    """The instance is recorded where it runs now, as it runs: on its (new) host, with the
    layers, kernel and initrd the saved guest booted (a newer substrate installed since
    reaches it at its next start, as ``refresh_layers`` does for any instance)."""
    instance, checkpoint = _load(ctx)
    boot = checkpoint.boot or {}
    state = {"running": "running", "paused": "paused"}.get(ctx.state.get("guest_state", ""))
    with ctx.services.db.write() as s:
        row = s.get(Instance, instance.id)
        if row is not None:
            row.host_id = ctx.params["host_id"]
            row.status = state or "running"
            row.error = None
            row.layers = list(boot.get("layers", row.layers or []))
            row.kernel = boot.get("kernel", row.kernel)
            row.initrd = boot.get("initrd", row.initrd)
            row.cmdline = boot.get("cmdline", row.cmdline)
    if not _moving(ctx):
        return
    with ctx.services.db.read() as s:
        source = s.get(Host, ctx.params["source_host_id"] or "")
        dest = s.get(Host, ctx.params["host_id"])
    if source is not None:
        try:
            ctx.services.agents.for_host(source).undefine(instance.domain_name)
        except BackendUnavailable:
            # Its old host is down: reconcile removes the guest there (an orphan now).
            log.warning("instance %s moved; %s keeps its old guest", instance.name, source.name)
    with ctx.services.db.read() as s:
        moved = s.get(Instance, instance.id)
    for hook in getattr(lifecycle_of(ctx.services), "after_move", []):
        hook(ctx.services, moved, source, dest)


def restore_failed(ctx: StepContext, error: str) -> None:
    """The instance is left in whatever state its guest on its (recorded) host is in."""
    try:
        instance, _ = _load(ctx)
        _, agent = _agent(ctx, instance.host_id)
        state = {"running": "running", "paused": "paused", "stopped": "stopped"}.get(
            agent.guest(instance.domain_name).state, "error"
        )
    except Exception:
        state = "error"
    with ctx.services.db.write() as s:
        row = s.get(Instance, ctx.params["instance_id"])
        if row is not None:
            row.status = state
            row.error = f"restore failed: {error}"


# -- checkpoint.delete, and an instance's checkpoints with it ------------------------------


def remove_images(svc: Services, checkpoint_ids: list[str]) -> None:
    """The images (metadata and files) of these checkpoints."""
    gone: list[tuple[str, str | None]] = []
    with svc.db.write() as s:
        query = select(Image).where(Image.others["checkpoint"].as_string().in_(checkpoint_ids))
        for image in s.scalars(query):
            if image.status == "uploading":
                images.fail_upload(s, image.id, "its checkpoint is removed")
            gone.append((image.store, image.location))
            s.delete(image)
    for store_name, location in gone:
        store_ = svc.stores.get(store_name)
        if store_ is None or not location or not store_.capabilities.writable:
            continue
        try:
            store_.delete(location)
        except LaminaError as exc:
            log.warning("checkpoint file %s not removed: %s", location, exc.message)


def delete(ctx: StepContext) -> None:
    remove_images(ctx.services, [ctx.params["checkpoint_id"]])
    with ctx.services.db.write() as s:
        checkpoint = s.get(Checkpoint, ctx.params["checkpoint_id"])
        if checkpoint is not None:
            s.delete(checkpoint)


def remove_checkpoints(ctx: StepContext) -> None:
    """``instance.delete``: every checkpoint of the instance goes with it."""
    with ctx.services.db.read() as s:
        ids = list(
            s.scalars(
                select(Checkpoint.id).where(Checkpoint.instance_id == ctx.params["instance_id"])
            )
        )
    if not ids:
        return
    remove_images(ctx.services, ids)
    with ctx.services.db.write() as s:
        for checkpoint in s.scalars(select(Checkpoint).where(Checkpoint.id.in_(ids))):
            s.delete(checkpoint)


def register_checkpoint_lifecycle(lifecycle: InstanceLifecycle) -> None:
    """An instance's checkpoints are deleted with it (before its jobs are registered)."""
    lifecycle.contribute("instance.delete", Step("remove_checkpoints", remove_checkpoints))


def register_checkpoint_jobs(registry: JobRegistry) -> None:
    registry.register(
        JobKind(
            "checkpoint.create",
            (
                Step("save", save, drop_saved, timeout=600),
                Step("store", store, remove_stored, timeout=3600),
                Step("activate", activate),
            ),
            deadline=2 * 3600,
            on_interrupt="rollback",
            on_failure=mark_failed,
        )
    )
    registry.register(
        JobKind(
            "checkpoint.restore",
            (
                Step("fetch", fetch, timeout=1800),
                Step("stop_source", stop_source, timeout=120),
                Step("restore", restore, unrestore, timeout=600),
                Step("switch", switch, timeout=120),
            ),
            deadline=3600,
            on_failure=restore_failed,
        )
    )
    registry.register(
        JobKind(
            "checkpoint.delete",
            (Step("remove", delete, timeout=600),),
            deadline=900,
            on_failure=mark_failed,
        )
    )
