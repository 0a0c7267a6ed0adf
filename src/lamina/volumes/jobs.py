"""The jobs that change volumes and snapshots, step by step, each step with its undo.

Every step is idempotent, so a manager that crashed mid-step runs it again at restart: the
agent's ``volume_delete``, ``snapshot_delete``, ``volume_unexport`` and ``guest_detach_disk``
are idempotent, ``volume_export`` and ``guest_attach_disk`` too for the same arguments, and a
step that creates bytes (a volume, a snapshot) first removes what an interrupted attempt may
have left and starts over. A failure at any step undoes it and every earlier step in reverse
(VBS section 5.2): an attach that fails leaves the volume ``available``, unexported and not
attached; a detach that fails leaves it ``in-use`` and attached as before.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import delete, select

from lamina.compute.hosts import parse_address
from lamina.compute.lifecycle import InstanceLifecycle
from lamina.compute.models import Host, Instance
from lamina.errors import GuestNotFound, InvalidState, NotFound
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.jobs.models import JobStep
from lamina.volumes.models import Attachment, Snapshot, Volume
from lamina.wire.client import AgentClient
from lamina.wire.protocol import (
    DiskAttach,
    SnapshotCreate,
    VolumeCreate,
    VolumeExport,
    VolumeExtend,
)

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)
T = TypeVar("T")
PROGRESS_INTERVAL = 0.5
#: A copy may be long; the agent allows it an hour (``AgentClient.volume_create``).
COPY_TIMEOUT = 3600.0


# -- loading ------------------------------------------------------------------------------


def _volume(ctx: StepContext) -> Volume:
    svc: Services = ctx.services
    with svc.db.read() as s:
        volume = s.get(Volume, ctx.params["volume_id"])
    if volume is None:
        raise NotFound(f"volume {ctx.params['volume_id']} vanished")
    return volume


def _set_volume(ctx: StepContext, **values: Any) -> None:
    svc: Services = ctx.services
    with svc.db.write() as s:
        volume = s.get(Volume, ctx.params["volume_id"])
        if volume is not None:
            for key, value in values.items():
                setattr(volume, key, value)


def _set_snapshot(ctx: StepContext, **values: Any) -> None:
    svc: Services = ctx.services
    with svc.db.write() as s:
        snapshot = s.get(Snapshot, ctx.params["snapshot_id"])
        if snapshot is not None:
            for key, value in values.items():
                setattr(snapshot, key, value)


def _agent_of(ctx: StepContext, host_id: str | None, what: str) -> AgentClient:
    svc: Services = ctx.services
    with svc.db.read() as s:
        host = s.get(Host, host_id) if host_id else None
    if host is None:
        raise NotFound(f"the host of {what} no longer exists")
    return svc.agents.for_host(host)


def _server(ctx: StepContext) -> AgentClient:
    """The volume server of the job's volume."""
    volume = _volume(ctx)
    return _agent_of(ctx, volume.host_id, f"volume {volume.id}")


def _instance(ctx: StepContext) -> tuple[Instance, Host]:
    svc: Services = ctx.services
    with svc.db.read() as s:
        instance = s.get(Instance, ctx.params["instance_id"])
        host = s.get(Host, instance.host_id) if instance and instance.host_id else None
    if instance is None or host is None:
        raise NotFound(f"instance {ctx.params['instance_id']} or its host vanished")
    return instance, host


def initiator_address(host: Host) -> str:
    """The IP address the volume server lets in: the instance host's, from ``Host.address``
    (its agent's host:port; a name is resolved)."""
    name, _ = parse_address(host.address)
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return str(socket.getaddrinfo(name, None)[0][4][0])


def _with_progress(
    ctx: StepContext,
    agent: AgentClient,
    source: str,
    work: Callable[[], T],
    row: Callable[..., None],
) -> T:
    """Run ``work`` (an agent call that copies bytes) while reporting the agent's transfer
    of ``source`` as the job's progress and the volume's or snapshot's."""
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(work)
        while True:
            try:
                return pending.result(timeout=PROGRESS_INTERVAL)
            except FuturesTimeout:
                _report(ctx, agent, source, row)


def _report(ctx: StepContext, agent: AgentClient, source: str, row: Callable[..., None]) -> None:
    try:
        transfers = agent.downloads().transfers
    except Exception:
        return  # progress is best effort; the copy itself decides the step
    for t in transfers:
        if t.source == source and t.bytes_total:
            part = t.bytes_done / t.bytes_total
            ctx.report(
                fraction=part * 0.95,
                bytes_done=t.bytes_done,
                bytes_total=t.bytes_total,
                rate=t.rate,
            )
            row(progress=part)


# -- volume.create ------------------------------------------------------------------------


def create_on_server(ctx: StepContext) -> None:
    """Make the volume's bytes: empty, copied from a snapshot, or a copy-on-write clone of
    it. A rerun removes what an interrupted attempt left and starts again."""
    volume = _volume(ctx)
    agent = _server(ctx)
    agent.volume_delete(volume.id)
    request = VolumeCreate(
        volume=volume.id,
        size_bytes=volume.size_bytes,
        snapshot=ctx.params.get("snapshot"),
        clone=bool(ctx.params.get("clone", True)),
    )
    info = _with_progress(
        ctx,
        agent,
        f"volume:{volume.id}",
        lambda: agent.volume_create(request),
        lambda **v: _set_volume(ctx, **v),
    )
    ctx.state["info"] = info.model_dump(mode="json")


def delete_on_server(ctx: StepContext) -> None:
    _server(ctx).volume_delete(ctx.params["volume_id"])


def record_created(ctx: StepContext) -> None:
    info = ctx.state["info"]
    _set_volume(
        ctx,
        status="available",
        size_bytes=info["size_bytes"],
        backend=info["backend"],
        export_format=info["export_format"],
        cloned_from=info.get("cloned_from"),
        progress=1.0,
        error=None,
    )


def volume_failed(ctx: StepContext, error: str) -> None:
    _set_volume(ctx, status="error", error=error)


# -- volume.delete ------------------------------------------------------------------------


def remove_from_server(ctx: StepContext) -> None:
    """Remove the volume's bytes (a file backend removes the file, never overwrites it),
    first withdrawing any export a failed rollback may have left."""
    volume = _volume(ctx)
    agent = _server(ctx)
    agent.volume_unexport(volume.id)
    agent.volume_delete(volume.id)


def forget_volume(ctx: StepContext) -> None:
    svc: Services = ctx.services
    with svc.db.write() as s:
        s.execute(delete(Attachment).where(Attachment.volume_id == ctx.params["volume_id"]))
        s.execute(delete(Volume).where(Volume.id == ctx.params["volume_id"]))


# -- volume.extend ------------------------------------------------------------------------


def extend_on_server(ctx: StepContext) -> None:
    """Grow the volume (resizing to the size it has is a no-op, so a rerun is harmless)."""
    volume = _volume(ctx)
    info = _server(ctx).volume_extend(volume.id, VolumeExtend(size_bytes=ctx.params["size_bytes"]))
    ctx.state["size_bytes"] = info.size_bytes


def record_extended(ctx: StepContext) -> None:
    _set_volume(ctx, status="available", size_bytes=ctx.state["size_bytes"], error=None)


def extend_failed(ctx: StepContext, error: str) -> None:
    """A failed extend leaves the volume as it was, usable."""
    _set_volume(ctx, status="available", error=error)


# -- snapshot.create and snapshot.delete --------------------------------------------------


def _snapshot(ctx: StepContext) -> Snapshot:
    svc: Services = ctx.services
    with svc.db.read() as s:
        snapshot = s.get(Snapshot, ctx.params["snapshot_id"])
    if snapshot is None:
        raise NotFound(f"snapshot {ctx.params['snapshot_id']} vanished")
    return snapshot


def take_snapshot(ctx: StepContext) -> None:
    """Copy the volume into an independent snapshot (a rerun starts the copy again)."""
    snapshot = _snapshot(ctx)
    agent = _agent_of(ctx, snapshot.host_id, f"snapshot {snapshot.id}")
    agent.snapshot_delete(snapshot.id)
    request = SnapshotCreate(snapshot=snapshot.id)
    info = _with_progress(
        ctx,
        agent,
        f"snapshot:{snapshot.id}",
        lambda: agent.snapshot_create(snapshot.volume_id, request),
        lambda **v: _set_snapshot(ctx, **v),
    )
    ctx.state["size_bytes"] = info.size_bytes


def remove_snapshot(ctx: StepContext) -> None:
    snapshot = _snapshot(ctx)
    _agent_of(ctx, snapshot.host_id, f"snapshot {snapshot.id}").snapshot_delete(snapshot.id)


def record_snapshot(ctx: StepContext) -> None:
    _set_snapshot(
        ctx, status="completed", size_bytes=ctx.state["size_bytes"], progress=1.0, error=None
    )


def forget_snapshot(ctx: StepContext) -> None:
    svc: Services = ctx.services
    with svc.db.write() as s:
        s.execute(delete(Snapshot).where(Snapshot.id == ctx.params["snapshot_id"]))


def snapshot_failed(ctx: StepContext, error: str) -> None:
    _set_snapshot(ctx, status="error", error=error)


# -- volume.attach ------------------------------------------------------------------------


def _set_attachment(ctx: StepContext, **values: Any) -> None:
    svc: Services = ctx.services
    with svc.db.write() as s:
        attachment = s.get(Attachment, _attachment_id(ctx))
        if attachment is not None:
            for key, value in values.items():
                setattr(attachment, key, value)


def _attachment_id(ctx: StepContext) -> int | None:
    svc: Services = ctx.services
    with svc.db.read() as s:
        return s.scalar(
            select(Attachment.id).where(Attachment.volume_id == ctx.params["volume_id"])
        )


def export(ctx: StepContext) -> None:
    """Export the volume from its server as an iSCSI target only the instance's host may
    log in to (idempotent for the same address)."""
    _, host = _instance(ctx)
    volume = _volume(ctx)
    info = _server(ctx).volume_export(
        volume.id, VolumeExport(initiator_address=initiator_address(host))
    )
    ctx.state["export"] = info.model_dump(mode="json")
    _set_attachment(ctx, iqn=info.iqn, lun=info.lun, portal=info.portal)


def unexport(ctx: StepContext) -> None:
    _server(ctx).volume_unexport(ctx.params["volume_id"])


def attach_disk(ctx: StepContext) -> None:
    """Attach the export to the guest as a network disk whose serial is the volume id."""
    instance, host = _instance(ctx)
    volume = _volume(ctx)
    exported = ctx.state["export"]
    svc: Services = ctx.services
    svc.agents.for_host(host).guest_attach_disk(
        instance.domain_name,
        ctx.params["device"],
        DiskAttach(
            iqn=exported["iqn"],
            lun=exported["lun"],
            portal=exported["portal"],
            format=exported.get("export_format") or volume.export_format or "raw",
            serial=volume.id,
        ),
    )


def detach_disk(ctx: StepContext) -> None:
    instance, host = _instance(ctx)
    svc: Services = ctx.services
    try:
        svc.agents.for_host(host).guest_detach_disk(instance.domain_name, ctx.params["device"])
    except GuestNotFound:
        log.info("guest of instance %s is gone: its disk is detached already", instance.name)


def record_attached(ctx: StepContext) -> None:
    _set_attachment(ctx, status="attached")
    _set_volume(ctx, status="in-use", error=None)


def _undo_failed(ctx: StepContext, *names: str) -> list[str]:
    """Which of the named steps of this job are not undone: their undo failed, or waits for
    its host (``undo_pending``: the runner retries it and calls the hook again after)."""
    svc: Services = ctx.services
    with svc.db.read() as s:
        query = select(JobStep.name).where(
            JobStep.job_id == ctx.job_id,
            JobStep.name.in_(names),
            JobStep.status.in_(("undo_failed", "undo_pending")),
        )
        return list(s.scalars(query))


def attach_failed(ctx: StepContext, error: str) -> None:
    """The volume is available again and attached nowhere, once its export is withdrawn:
    without the target no guest can reach its bytes, even one on a host that could not be
    told to detach (the step's undo failed; ``lamina reconcile`` finds that disk). If the
    unexport failed too, the volume is ``error`` (delete unexports it first); when that was
    because the server could not be reached, the runner unexports again once it answers
    and calls this again: the volume is then ``available``."""
    svc: Services = ctx.services
    exported = _undo_failed(ctx, "export")
    with svc.db.write() as s:
        volume = s.get(Volume, ctx.params["volume_id"])
        if volume is None:
            return
        if exported:
            volume.status = "error"
            volume.error = (
                f"{error}; its iSCSI target may still be exported (withdrawn, and the volume "
                "available again, once its server answers)"
            )
            return
        s.execute(delete(Attachment).where(Attachment.volume_id == volume.id))
        volume.status = "available"
        volume.error = error


# -- volume.detach ------------------------------------------------------------------------


def _current_export(ctx: StepContext) -> dict[str, Any]:
    svc: Services = ctx.services
    with svc.db.read() as s:
        attachment = s.get(Attachment, _attachment_id(ctx))
        volume = s.get(Volume, ctx.params["volume_id"])
    if attachment is None or volume is None or not attachment.iqn:
        raise InvalidState(f"volume {ctx.params['volume_id']} has no recorded export")
    return {
        "iqn": attachment.iqn,
        "lun": attachment.lun or 1,
        "portal": attachment.portal,
        "export_format": volume.export_format,
    }


def reattach_disk(ctx: StepContext) -> None:
    """Undo of the detach: put the disk back as it was (from the attachment's record, which
    a re-export updates)."""
    ctx.state["export"] = _current_export(ctx)
    attach_disk(ctx)


def reexport(ctx: StepContext) -> None:
    """Undo of the unexport: export again for the instance's host."""
    export(ctx)


def _forget_attachment(svc: Services, volume_id: str) -> None:
    """The volume's attachment goes and the volume is ``available`` again."""
    with svc.db.write() as s:
        s.execute(delete(Attachment).where(Attachment.volume_id == volume_id))
        volume = s.get(Volume, volume_id)
        if volume is not None and volume.status in ("in-use", "attaching", "detaching"):
            volume.status = "available"
            volume.error = None


def record_detached(ctx: StepContext) -> None:
    _forget_attachment(ctx.services, ctx.params["volume_id"])


def release_instance_volumes(svc: Services, instance_id: str) -> list[str]:
    """After an instance's guest is gone: withdraw the exports of the volumes attached to it
    and make them ``available`` again (EBS detaches volumes when an instance terminates).
    Idempotent. Answers the volumes released."""
    with svc.db.read() as s:
        rows = list(
            s.execute(
                select(Attachment.volume_id, Volume.host_id)
                .join(Volume, Volume.id == Attachment.volume_id)
                .where(Attachment.instance_id == instance_id)
            )
        )
    released = []
    for volume_id, server_id in rows:
        with svc.db.read() as s:
            server = s.get(Host, server_id)
        if server is not None:
            svc.agents.for_host(server).volume_unexport(volume_id)
        _forget_attachment(svc, volume_id)
        released.append(volume_id)
        log.info("volume %s released: its instance %s was deleted", volume_id, instance_id)
    return released


def release_volumes(ctx: StepContext) -> None:
    """The guest is gone, and with it its volumes' disks: withdraw their exports and make
    them available again (a step of ``instance.delete``)."""
    release_instance_volumes(ctx.services, ctx.params["instance_id"])


# -- an instance moving between hosts (lamina.compute.migration) ---------------------------


def _exported(svc: Services, instance: Instance) -> list[tuple[str, AgentClient]]:
    """(volume id, its server's agent) of each volume attached to ``instance``."""
    with svc.db.read() as s:
        rows = list(
            s.execute(
                select(Attachment.volume_id, Volume.host_id)
                .join(Volume, Volume.id == Attachment.volume_id)
                .where(Attachment.instance_id == instance.id)
            )
        )
        servers = {
            h.id: h for h in s.scalars(select(Host).where(Host.id.in_([r[1] for r in rows])))
        }
    return [(v, svc.agents.for_host(servers[h])) for v, h in rows if h in servers]


def volumes_to_destination(svc: Services, instance: Instance, source: Host, dest: Host) -> None:
    """Before the switch: each attached volume's export lets the destination's initiator in
    too (its QEMU logs in when the guest's incoming half starts)."""
    for volume, server in _exported(svc, instance):
        server.volume_allow(volume, initiator_address(dest))
        log.info("volume %s exported to %s too (instance %s moving)", volume, dest.name,
                 instance.name)  # fmt: skip


def volumes_from_source(svc: Services, instance: Instance, source: Host, dest: Host) -> None:
    """After the switch: the source's initiator is let go (its QEMU closed its session)."""
    for volume, server in _exported(svc, instance):
        server.volume_disallow(volume, initiator_address(source))


def volumes_stay(svc: Services, instance: Instance, source: Host, dest: Host) -> None:
    """A move rolled back: the destination's initiator is let go again."""
    for volume, server in _exported(svc, instance):
        server.volume_disallow(volume, initiator_address(dest))


def register_volume_lifecycle(lifecycle: InstanceLifecycle) -> None:
    lifecycle.contribute("instance.delete", Step("release_volumes", release_volumes, timeout=300))
    lifecycle.before_move.append(volumes_to_destination)
    lifecycle.after_move.append(volumes_from_source)
    lifecycle.move_aborted.append(volumes_stay)


def detach_failed(ctx: StepContext, error: str) -> None:
    """Everything done was undone: the volume is still attached, in use. If an undo failed
    (the disk could not be put back, or the target exported again), it is ``error``."""
    broken = _undo_failed(ctx, "detach", "unexport")
    _set_attachment(ctx, status="attached")
    if broken:
        _set_volume(ctx, status="error", error=f"{error}; could not undo {', '.join(broken)}")
    else:
        _set_volume(ctx, status="in-use", error=error)


def register_volume_jobs(registry: JobRegistry) -> None:
    copy = COPY_TIMEOUT
    for kind in (
        JobKind(
            "volume.create",
            (
                Step("create", create_on_server, delete_on_server, timeout=copy),
                Step("record", record_created),
            ),
            deadline=copy + 300,
            on_failure=volume_failed,
        ),
        JobKind(
            "volume.delete",
            (Step("delete", remove_from_server, timeout=300), Step("forget", forget_volume)),
            deadline=600,
            on_failure=volume_failed,
        ),
        JobKind(
            "volume.extend",
            (Step("extend", extend_on_server, timeout=600), Step("record", record_extended)),
            deadline=900,
            on_failure=extend_failed,
        ),
        JobKind(
            "snapshot.create",
            (
                Step("snapshot", take_snapshot, remove_snapshot, timeout=copy),
                Step("record", record_snapshot),
            ),
            deadline=copy + 300,
            on_failure=snapshot_failed,
        ),
        JobKind(
            "snapshot.delete",
            (Step("delete", remove_snapshot, timeout=300), Step("forget", forget_snapshot)),
            deadline=600,
            on_failure=snapshot_failed,
        ),
        JobKind(
            "volume.attach",
            (
                Step("export", export, unexport),
                Step("attach", attach_disk, detach_disk),
                Step("record", record_attached),
            ),
            deadline=300,
            on_failure=attach_failed,
        ),
        JobKind(
            "volume.detach",
            (
                Step("detach", detach_disk, reattach_disk),
                Step("unexport", unexport, reexport),
                Step("record", record_detached),
            ),
            deadline=300,
            on_failure=detach_failed,
        ),
    ):
        registry.register(kind)
