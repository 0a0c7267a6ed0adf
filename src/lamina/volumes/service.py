"""Volumes and snapshots: the use cases, their states, and who may do what.

The use cases (``create_volume(svc, who, ...)`` ...) are what a front end calls: each runs its
own transactions and returns what the API shows. The functions after them work inside a
transaction the caller holds.

Every change of state goes through ``move`` (volumes) or ``move_snapshot``, which know the
legal transitions and refuse the others with a 409 ``invalid_state`` naming the current
state. Long work (copying, exporting, attaching) is handed to the jobs of
``lamina.volumes.jobs``; these functions only check, record the transitional state and submit.

The volume server of a new volume is the first host (oldest registered) that is ``up``;
administrators may name another. A volume made from a snapshot lives on the snapshot's host,
which holds the snapshot's bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lamina.compute.hosts import get_host
from lamina.compute.instances import NAME, get_instance
from lamina.compute.models import Host, Instance
from lamina.db.refs import pick_named
from lamina.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    InvalidState,
    NoCapacity,
    NotFound,
    TooLarge,
)
from lamina.identity.access import Need, check, visible_to
from lamina.identity.principal import Principal
from lamina.jobs.kinds import JobRegistry
from lamina.jobs.models import Job
from lamina.jobs.service import submit
from lamina.volumes.models import Attachment, Snapshot, Volume
from lamina.volumes.quota import check_volume_bytes

if TYPE_CHECKING:
    from lamina.services import Services

VOLUME = "volume"
SNAPSHOT = "snapshot"
DEVICE = re.compile(r"^vd[b-z]$")
#: What ids look like (``volumes.models``): a name may not, or it would hide behind an id.
LOOKS_LIKE_ID = re.compile(r"^(vol|snap)-[0-9a-f]{16}$")
DEVICES = [f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz"]
#: volume status -> the statuses it may move to (docs/volumes.md, "States").
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "creating": ("available", "error"),
    "available": ("attaching", "extending", "deleting"),
    "attaching": ("in-use", "available", "error"),
    "in-use": ("detaching",),
    "detaching": ("available", "in-use", "error"),
    "extending": ("available",),
    "deleting": ("error",),
    "error": ("deleting",),
}
SNAPSHOT_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("completed", "error"),
    "completed": ("deleting",),
    "deleting": ("error",),
    "error": ("deleting",),
}
#: What each operation is called in messages, by the status it moves a volume to.
VERBS = {
    "attaching": "attach",
    "detaching": "detach",
    "extending": "extend",
    "deleting": "delete",
    "available": "make available",
    "in-use": "mark in-use",
    "error": "mark failed",
}
#: Statuses of an instance a volume may be attached to.
ATTACHABLE = ("running", "stopped", "paused")


class VolumeNotFound(NotFound):
    def __init__(self, volume_id: str) -> None:
        super().__init__(f"volume {volume_id!r} does not exist", volume=volume_id)


class SnapshotNotFound(NotFound):
    def __init__(self, snapshot_id: str) -> None:
        super().__init__(f"snapshot {snapshot_id!r} does not exist", snapshot=snapshot_id)


def check_name(kind: str, name: str | None) -> None:
    """InvalidRequest unless ``name`` (optional: None is no name) is a DNS label, as
    instance and network names are, and does not look like a volume or snapshot id."""
    if name is None:
        return
    problem = None
    if not NAME.match(name):
        problem = "must be 1-63 lower-case letters, digits or '-', not starting or ending with '-'"
    elif LOOKS_LIKE_ID.match(name):
        problem = "looks like an id: choose another"
    if problem:
        raise InvalidRequest(
            f"{kind} name {name!r} {problem}", fields=[{"field": "name", "message": problem}]
        )


# -- states -------------------------------------------------------------------------------


def move(session: Session, volume: Volume, to: str) -> None:
    """Set a volume's status, or raise InvalidState naming the one it is in (and, when the
    volume is attached or attaching, the instance)."""
    refuse(session, volume, to)
    volume.status = to


def refuse(session: Session, volume: Volume, to: str) -> None:
    """Raise InvalidState unless the volume may move to ``to``; change nothing."""
    if to not in TRANSITIONS.get(volume.status, ()):
        where = _whereabouts(session, volume)
        raise InvalidState(
            f"cannot {VERBS.get(to, to)} volume {volume.id}: it is {volume.status}{where}",
            volume=volume.id,
            status=volume.status,
        )


def move_snapshot(snapshot: Snapshot, to: str) -> None:
    if to not in SNAPSHOT_TRANSITIONS.get(snapshot.status, ()):
        verb = "delete" if to == "deleting" else f"mark {to}"
        raise InvalidState(
            f"cannot {verb} snapshot {snapshot.id}: it is {snapshot.status}",
            snapshot=snapshot.id,
            status=snapshot.status,
        )
    snapshot.status = to


def _whereabouts(session: Session, volume: Volume) -> str:
    attachment = attachment_of(session, volume.id)
    if attachment is None:
        return ""
    instance = session.get(Instance, attachment.instance_id)
    name = instance.name if instance else attachment.instance_id
    word = "attaching to" if volume.status == "attaching" else "attached to"
    return f" ({word} instance {name!r}, {attachment.instance_id}, as {attachment.device})"


def attachment_of(session: Session, volume_id: str) -> Attachment | None:
    return session.scalar(select(Attachment).where(Attachment.volume_id == volume_id))


# -- use cases ----------------------------------------------------------------------------
# What the API (and any other front end) calls: each takes the container and the caller, runs
# its own transactions, checks who may do it, wakes the job runner for the work it queued and
# returns the volume or snapshot as the API shows it (with the job, for long work).


def create_volume(
    svc: Services,
    who: Principal,
    *,
    size_bytes: int | None = None,
    snapshot: str | None = None,
    comment: str = "",
    host: str | None = None,
    clone: bool = True,
    name: str | None = None,
) -> tuple[dict[str, Any], Job]:
    """Record a ``creating`` volume (``name``: optional, not unique) of ``size_bytes``
    (empty) or made from a completed ``snapshot`` (id or name; at least the snapshot's size;
    copy-on-write if ``clone`` and the backend can, else a copy) on the volume server
    (``host``: administrators only) and queue the ``volume.create`` job. ``TooLarge`` for a
    size past what the server takes (its agent is asked: ``BackendUnavailable`` if it cannot
    be reached), ``QuotaExceeded`` past the caller's ``volume_bytes``: nothing recorded."""
    check_name(VOLUME, name)
    with svc.db.read() as s:
        server = _server_for(s, who, host, snapshot)
    room = _room_on(svc, server)
    with svc.db.write() as s:
        volume, job = _create_volume(
            s,
            svc.jobs,
            who,
            size_bytes=size_bytes,
            snapshot=snapshot,
            comment=comment,
            host=host,
            clone=clone,
            room=room,
            name=name,
        )
        result = _describe_volume(s, volume), job
    svc.wake_jobs()
    return result


def list_volumes(
    svc: Services,
    who: Principal,
    *,
    ids: list[str] | None = None,
    status: str | None = None,
    instance: str | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """The volumes ``who`` owns (all, for admins), oldest first, filtered by ``ids`` (ids or
    names), status, name and the instance (id or name) they are attached to."""
    with svc.db.read() as s:
        found = _list_volumes(s, who, ids=ids, status=status, instance=instance, name=name)
        return [_describe_volume(s, v) for v in found]


def show_volume(svc: Services, who: Principal, volume_id: str) -> dict[str, Any]:
    """One volume ``who`` may see, by id or name (``VolumeNotFound`` otherwise)."""
    with svc.db.read() as s:
        return _describe_volume(s, _get_volume(s, volume_id, who))


def delete_volume(svc: Services, who: Principal, volume_id: str) -> tuple[dict[str, Any], Job]:
    """Queue the deletion of an ``available`` (or failed) volume of ``who``'s. Its snapshots
    stay."""
    with svc.db.write() as s:
        volume = _get_volume(s, volume_id, who, "own", lock=True)
        job = _delete_volume(s, svc.jobs, volume)
        result = _describe_volume(s, volume), job
    svc.wake_jobs()
    return result


def extend_volume(
    svc: Services, who: Principal, volume_id: str, size_bytes: int
) -> tuple[dict[str, Any], Job]:
    """Queue growing an ``available`` volume to ``size_bytes`` (never shrinking). The growth
    counts against the owner's ``volume_bytes`` and must fit the volume server."""
    room = _room_of(svc, who, volume_id)
    with svc.db.write() as s:
        volume = _get_volume(s, volume_id, who, "operate", lock=True)
        job = _extend_volume(s, svc.jobs, volume, size_bytes, room)
        result = _describe_volume(s, volume), job
    svc.wake_jobs()
    return result


def attach_volume(
    svc: Services, who: Principal, volume_id: str, instance_ref: str, device: str | None
) -> tuple[dict[str, Any], Job]:
    """Queue attaching an ``available`` volume to an instance of the caller's as ``device``
    (default: the instance's first free ``vd[b-z]``, asked of its host, which must then be
    reachable). A volume attached
    (or attaching) anywhere is refused naming that instance, also when two requests race:
    the attachments table's unique constraints decide."""
    if device is not None and not DEVICE.match(device):
        raise InvalidRequest(f"device {device!r} must be vdb ... vdz")
    with svc.db.read() as s:
        instance = get_instance(s, instance_ref, who, "operate")
        refuse(s, _get_volume(s, volume_id, who, "operate"), "attaching")
        host = s.get(Host, instance.host_id) if instance.host_id else None
        if host is None:
            raise InvalidState(f"instance {instance.name!r} has no host")
    # The default device skips the guest's own disks (a layered instance has several), which
    # only its host knows. A device given is taken at its word: if the guest has it, the
    # job's attach step fails and everything is undone.
    used: set[str] = set()
    if device is None:
        used = {d.target for d in svc.agents.for_host(host).guest_disks(instance.domain_name)}
    with svc.db.write() as s:
        volume = _get_volume(s, volume_id, who, "operate", lock=True)
        instance = get_instance(s, instance.id, who, "operate")
        if instance.status not in ATTACHABLE:
            raise InvalidState(
                f"cannot attach a volume to instance {instance.name!r}: it is {instance.status}",
                instance=instance.id,
                status=instance.status,
            )
        if volume.host_id is None:
            raise InvalidState(f"volume {volume.id} has no volume server")
        taken = set(
            s.scalars(select(Attachment.device).where(Attachment.instance_id == instance.id))
        )
        if device is None:
            free = [d for d in DEVICES if d not in used and d not in taken]
            if not free:
                raise Conflict(f"instance {instance.name!r} has no free device left")
            device = free[0]
        move(s, volume, "attaching")
        # Plain values: a failed flush expires the session's objects.
        names = (volume.id, instance.id, instance.name, device)
        s.add(Attachment(volume_id=volume.id, instance_id=instance.id, device=device))
        try:
            s.flush()
        except IntegrityError:
            raise _attach_conflict(svc, *names) from None
        job = _submit(s, svc.jobs, "volume.attach", volume, instance_id=instance.id, device=device)
        result = _describe_volume(s, volume), job
    svc.wake_jobs()
    return result


def detach_volume(svc: Services, who: Principal, volume_id: str) -> tuple[dict[str, Any], Job]:
    """Queue detaching an ``in-use`` volume from its instance."""
    with svc.db.write() as s:
        volume = _get_volume(s, volume_id, who, "operate", lock=True)
        job = _detach_volume(s, svc.jobs, volume)
        result = _describe_volume(s, volume), job
    svc.wake_jobs()
    return result


def create_snapshot(
    svc: Services, who: Principal, volume_id: str, comment: str = "", name: str | None = None
) -> tuple[dict[str, Any], Job]:
    """Record a ``pending`` snapshot (``name``: optional, not unique) of an ``available`` or
    ``in-use`` volume (id or name) and queue the ``snapshot.create`` job (see
    ``_create_snapshot``)."""
    check_name(SNAPSHOT, name)
    room = _room_of(svc, who, volume_id)
    with svc.db.write() as s:
        volume = _get_volume(s, volume_id, who, "operate", lock=True)
        snapshot, job = _create_snapshot(s, svc.jobs, who, volume, comment, room, name)
        result = _describe_snapshot(s, snapshot), job
    svc.wake_jobs()
    return result


def list_snapshots(
    svc: Services,
    who: Principal,
    *,
    ids: list[str] | None = None,
    status: str | None = None,
    volume: str | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """The snapshots ``who`` owns (all, for admins), oldest first, filtered by ``ids`` (ids
    or names), status, name and volume (id, or the name of a volume that still exists)."""
    with svc.db.read() as s:
        if volume:
            try:
                volume = _get_volume(s, volume, who).id
            except NotFound:
                pass  # a snapshot outlives its volume: the id of one deleted still filters
        found = _list_snapshots(s, who, ids=ids, status=status, volume=volume, name=name)
        return [_describe_snapshot(s, x) for x in found]


def show_snapshot(svc: Services, who: Principal, snapshot_id: str) -> dict[str, Any]:
    """One snapshot ``who`` may see, by id or name (``SnapshotNotFound`` otherwise)."""
    with svc.db.read() as s:
        return _describe_snapshot(s, _get_snapshot(s, snapshot_id, who))


def delete_snapshot(svc: Services, who: Principal, snapshot_id: str) -> tuple[dict[str, Any], Job]:
    """Queue deleting a snapshot of ``who``'s, refused while a volume is a copy-on-write
    clone of it."""
    with svc.db.write() as s:
        snapshot = _get_snapshot(s, snapshot_id, who, "own", lock=True)
        job = _delete_snapshot(s, svc.jobs, snapshot)
        result = _describe_snapshot(s, snapshot), job
    svc.wake_jobs()
    return result


def _room_of(svc: Services, who: Principal, volume_id: str) -> Room | None:
    """The room on a volume's server (None when it has none: the state check refuses)."""
    with svc.db.read() as s:
        volume = _get_volume(s, volume_id, who, "operate")
        host = s.get(Host, volume.host_id) if volume.host_id else None
    return _room_on(svc, host) if host is not None else None


# -- inside a transaction ------------------------------------------------------------------
# The steps of the use cases above, each on an open session; not for front ends.


# -- reading ------------------------------------------------------------------------------


def _ref_id(session: Session, who: Principal, kind: str, ref: str) -> str | None:
    """The id ``ref`` means: itself if a volume or snapshot (``kind``) has that id, else the
    one of that name ``who`` may see (``pick_named``: their own first; ``Ambiguous`` if
    several); None if none."""
    model: type[Volume] | type[Snapshot] = Volume if kind == VOLUME else Snapshot
    if session.scalar(select(model.id).where(model.id == ref)) is not None:
        return ref
    named: list[Volume | Snapshot] = list(
        session.scalars(
            select(model)
            .where(model.name == ref, visible_to(who, kind, model.id, model.owner))
            .order_by(model.created_at, model.id)
            .limit(100)
        )
    )
    found = pick_named(kind, ref, named, who.user_id)
    return found.id if found is not None else None


def _get_volume(
    session: Session, volume_id: str, who: Principal, need: Need = "read", lock: bool = False
) -> Volume:
    """A volume ``who`` may see, by id or name (else VolumeNotFound), and do ``need`` on
    (else Forbidden). ``lock`` takes its row lock (PostgreSQL) for a change of state."""
    ident = _ref_id(session, who, VOLUME, volume_id)
    query = select(Volume).where(Volume.id == ident)
    volume = session.scalar(query.with_for_update() if lock else query) if ident else None
    if volume is None:
        raise VolumeNotFound(volume_id)
    try:
        check(session, who, VOLUME, volume, need, volume_id)
    except NotFound:
        raise VolumeNotFound(volume_id) from None
    return volume


def _get_snapshot(
    session: Session, snapshot_id: str, who: Principal, need: Need = "read", lock: bool = False
) -> Snapshot:
    """A snapshot ``who`` may see, by id or name (else SnapshotNotFound), and do ``need`` on
    (else Forbidden)."""
    ident = _ref_id(session, who, SNAPSHOT, snapshot_id)
    query = select(Snapshot).where(Snapshot.id == ident)
    snapshot = session.scalar(query.with_for_update() if lock else query) if ident else None
    if snapshot is None:
        raise SnapshotNotFound(snapshot_id)
    try:
        check(session, who, SNAPSHOT, snapshot, need, snapshot_id)
    except NotFound:
        raise SnapshotNotFound(snapshot_id) from None
    return snapshot


def _list_volumes(
    session: Session,
    who: Principal,
    *,
    ids: list[str] | None = None,
    status: str | None = None,
    instance: str | None = None,
    name: str | None = None,
) -> list[Volume]:
    """The volumes ``who`` owns (all, for admins), oldest first, filtered by ``ids`` (ids or
    names), status, name and the instance (id or name) they are attached to."""
    query = select(Volume).order_by(Volume.created_at, Volume.id)
    if not who.is_admin:
        query = query.where(Volume.owner == who.user_id)
    if ids:
        query = query.where(Volume.id.in_(ids) | Volume.name.in_(ids))
    if name:
        query = query.where(Volume.name == name)
    if status:
        query = query.where(Volume.status == status)
    if instance:
        query = (
            query.join(Attachment, Attachment.volume_id == Volume.id)
            .join(Instance, Instance.id == Attachment.instance_id)
            .where((Instance.id == instance) | (Instance.name == instance))
        )
    return list(session.scalars(query))


def _list_snapshots(
    session: Session,
    who: Principal,
    *,
    ids: list[str] | None = None,
    status: str | None = None,
    volume: str | None = None,
    name: str | None = None,
) -> list[Snapshot]:
    query = select(Snapshot).order_by(Snapshot.created_at, Snapshot.id)
    if not who.is_admin:
        query = query.where(Snapshot.owner == who.user_id)
    if ids:
        query = query.where(Snapshot.id.in_(ids) | Snapshot.name.in_(ids))
    if name:
        query = query.where(Snapshot.name == name)
    if status:
        query = query.where(Snapshot.status == status)
    if volume:
        query = query.where(Snapshot.volume_id == volume)
    return list(session.scalars(query))


def _describe_volume(session: Session, volume: Volume) -> dict[str, Any]:
    """The volume as the API shows it, with its attachment if it has one."""
    host = session.get(Host, volume.host_id) if volume.host_id else None
    attachment = attachment_of(session, volume.id)
    attached = None
    if attachment is not None:
        instance = session.get(Instance, attachment.instance_id)
        attached = {
            "instance": attachment.instance_id,
            "instance_name": instance.name if instance else None,
            "device": attachment.device,
            "status": attachment.status,
            "iqn": attachment.iqn,
            "lun": attachment.lun,
            "portal": attachment.portal,
            "created_at": attachment.created_at,
        }
    return {
        "id": volume.id,
        "name": volume.name,
        "owner": volume.owner,
        "size_bytes": volume.size_bytes,
        "status": volume.status,
        "host": host.name if host else None,
        "host_id": volume.host_id,
        "backend": volume.backend,
        "export_format": volume.export_format,
        "snapshot": volume.snapshot_id,
        "cloned_from": volume.cloned_from,
        "comment": volume.comment,
        "progress": round(volume.progress, 4),
        "error": volume.error,
        "attachment": attached,
        "created_at": volume.created_at,
        "updated_at": volume.updated_at,
    }


def _describe_snapshot(session: Session, snapshot: Snapshot) -> dict[str, Any]:
    host = session.get(Host, snapshot.host_id) if snapshot.host_id else None
    volume = session.get(Volume, snapshot.volume_id)
    return {
        "id": snapshot.id,
        "name": snapshot.name,
        "volume": snapshot.volume_id,
        "volume_name": volume.name if volume is not None else None,
        "owner": snapshot.owner,
        "size_bytes": snapshot.size_bytes,
        "status": snapshot.status,
        "progress": round(snapshot.progress, 4),
        "host": host.name if host else None,
        "host_id": snapshot.host_id,
        "comment": snapshot.comment,
        "error": snapshot.error,
        "created_at": snapshot.created_at,
        "updated_at": snapshot.updated_at,
    }


# -- limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Room:
    """What a volume server takes: the largest volume (``volumes.max_size_bytes``) and the
    free bytes of its volume root (None: it cannot tell)."""

    host: str
    max_size: int
    free: int | None


def _room_on(svc: Services, host: Host) -> Room:
    """Ask ``host``'s agent how much room its volume root has (``BackendUnavailable`` if it
    cannot be reached: the job could not run either)."""
    usage = svc.agents.for_host(host).disk_usage()
    return Room(host.name, svc.settings.volumes.max_size_bytes, usage.volume_free_bytes)


def _fits(room: Room | None, what: str, size: int | None, grows: int) -> None:
    """Refuse (``TooLarge``) a volume of ``size`` bytes (None: a size checked before) that
    takes ``grows`` more bytes on its server."""
    if room is None:
        return
    if size is not None and size > room.max_size:
        raise TooLarge(
            f"{what} too large: {size} bytes asked, volumes.max_size_bytes allows {room.max_size}",
            limit=room.max_size,
            requested=size,
        )
    if room.free is not None and grows > room.free:
        raise TooLarge(
            f"{what} too large: it needs {grows} bytes and the volume server {room.host!r} has "
            f"{room.free} bytes free",
            limit=room.free,
            requested=grows,
        )


def _server_for(session: Session, who: Principal, host: str | None, snapshot: str | None) -> Host:
    """The host a new volume would live on (see ``_create_volume``), to ask for its room."""
    if snapshot:
        source = _get_snapshot(session, snapshot, who)
        server = session.get(Host, source.host_id) if source.host_id else None
        if server is None:
            raise NotFound(f"the host of snapshot {source.id} no longer exists")
        return server
    return _volume_server(session, host, who)


# -- volumes ------------------------------------------------------------------------------


def _volume_server(session: Session, host: str | None, who: Principal) -> Host:
    """The host that will keep a new volume: the named one (administrators only), else the
    oldest registered host that is up."""
    if host:
        if not who.is_admin:
            raise Forbidden("only administrators may choose the volume server")
        chosen = get_host(session, host)
        if chosen.status != "up":
            raise NoCapacity(f"host {chosen.name!r} is {chosen.status}", host=chosen.name)
        return chosen
    first = session.scalar(
        select(Host).where(Host.status == "up").order_by(Host.created_at, Host.name).limit(1)
    )
    if first is None:
        raise NoCapacity("no host is up to keep the volume")
    return first


def _submit(session: Session, registry: JobRegistry, kind: str, target: Any, **params: Any) -> Job:
    target_type = SNAPSHOT if isinstance(target, Snapshot) else VOLUME
    return submit(
        session,
        registry.get(kind),
        {f"{target_type}_id": target.id, **params},
        target_type=target_type,
        target_id=target.id,
        owner=target.owner,
    )


def _create_volume(
    session: Session,
    registry: JobRegistry,
    who: Principal,
    *,
    size_bytes: int | None = None,
    snapshot: str | None = None,
    comment: str = "",
    host: str | None = None,
    clone: bool = True,
    room: Room | None = None,
    name: str | None = None,
) -> tuple[Volume, Job]:
    """Record a ``creating`` volume of ``size_bytes`` (empty) or made from a completed
    ``snapshot`` (at least the snapshot's size; copy-on-write if ``clone`` and the backend can,
    else a copy) and queue the ``volume.create`` job. ``TooLarge`` for a size past ``room``
    (the server's), ``QuotaExceeded`` past the caller's ``volume_bytes``: nothing recorded."""
    source = None
    if snapshot:
        source = _get_snapshot(session, snapshot, who)
        if source.status != "completed":
            raise InvalidState(
                f"cannot create a volume from snapshot {source.id}: it is {source.status}",
                snapshot=source.id,
                status=source.status,
            )
        if host:
            raise InvalidRequest("a volume made from a snapshot lives on the snapshot's host")
        size_bytes = size_bytes or source.size_bytes
        if size_bytes < source.size_bytes:
            raise InvalidRequest(
                f"size {size_bytes} is smaller than snapshot {source.id} ({source.size_bytes})"
            )
        server = session.get(Host, source.host_id) if source.host_id else None
        if server is None:
            raise NotFound(f"the host of snapshot {source.id} no longer exists")
    else:
        if not size_bytes or size_bytes <= 0:
            raise InvalidRequest("give the volume's size, or a snapshot to make it from")
        server = _volume_server(session, host, who)
    _fits(room, "volume", size_bytes, size_bytes)
    check_volume_bytes(session, who.user_id, size_bytes)
    volume = Volume(
        name=name,
        owner=who.user_id,
        size_bytes=size_bytes,
        status="creating",
        host_id=server.id,
        snapshot_id=source.id if source else None,
        comment=comment,
        progress=0.0,
    )
    session.add(volume)
    session.flush()
    job = _submit(
        session,
        registry,
        "volume.create",
        volume,
        snapshot=source.id if source else None,
        clone=clone,
    )
    return volume, job


def _no_pending_snapshot(session: Session, volume: Volume, verb: str) -> None:
    pending = session.scalar(
        select(Snapshot.id).where(Snapshot.volume_id == volume.id, Snapshot.status == "pending")
    )
    if pending:
        raise InvalidState(
            f"cannot {verb} volume {volume.id}: snapshot {pending} of it is pending",
            volume=volume.id,
            snapshot=pending,
        )


def _delete_volume(session: Session, registry: JobRegistry, volume: Volume) -> Job:
    """Queue the deletion of an ``available`` (or failed) volume. Its snapshots stay."""
    _no_pending_snapshot(session, volume, "delete")
    move(session, volume, "deleting")
    return _submit(session, registry, "volume.delete", volume)


def _extend_volume(
    session: Session,
    registry: JobRegistry,
    volume: Volume,
    size_bytes: int,
    room: Room | None = None,
) -> Job:
    """Queue growing an ``available`` volume to ``size_bytes`` (never shrinking). The growth
    counts against the owner's ``volume_bytes`` and must fit ``room``."""
    if size_bytes <= volume.size_bytes:
        raise InvalidRequest(
            f"volume {volume.id} is {volume.size_bytes} bytes: extend it to a bigger size "
            f"(asked {size_bytes})"
        )
    _no_pending_snapshot(session, volume, "extend")
    refuse(session, volume, "extending")
    _fits(room, f"volume {volume.id}", size_bytes, size_bytes - volume.size_bytes)
    check_volume_bytes(session, volume.owner, size_bytes - volume.size_bytes)
    move(session, volume, "extending")
    return _submit(session, registry, "volume.extend", volume, size_bytes=size_bytes)


def _attach_conflict(
    svc: Services, volume_id: str, instance_id: str, instance_name: str, device: str
) -> Conflict:
    """What lost a race to the attachments' unique constraints, as committed."""
    with svc.db.read() as s:
        held = attachment_of(s, volume_id)
        if held is not None:
            other = s.get(Instance, held.instance_id)
            name = other.name if other else held.instance_id
            return Conflict(
                f"volume {volume_id} is already attached to instance {name!r} "
                f"({held.instance_id}): a volume is attached to one instance at a time",
                volume=volume_id,
                instance=held.instance_id,
            )
    return Conflict(
        f"device {device} of instance {instance_name!r} is taken by another volume",
        instance=instance_id,
        device=device,
    )


def _detach_volume(session: Session, registry: JobRegistry, volume: Volume) -> Job:
    """Queue detaching an ``in-use`` volume from its instance."""
    move(session, volume, "detaching")
    attachment = attachment_of(session, volume.id)
    if attachment is None:  # pragma: no cover - in-use always has one (attach job's record)
        raise InvalidState(f"volume {volume.id} is in-use but has no attachment")
    attachment.status = "detaching"
    return _submit(
        session,
        registry,
        "volume.detach",
        volume,
        instance_id=attachment.instance_id,
        device=attachment.device,
    )


# -- snapshots ----------------------------------------------------------------------------


def _create_snapshot(
    session: Session,
    registry: JobRegistry,
    who: Principal,
    volume: Volume,
    comment: str = "",
    room: Room | None = None,
    name: str | None = None,
) -> tuple[Snapshot, Job]:
    """Record a ``pending`` snapshot of an ``available`` or ``in-use`` volume (crash-consistent
    while attached, as EBS's) and queue the ``snapshot.create`` job. The snapshot counts its
    volume's size against the owner's ``volume_bytes`` and must fit ``room`` (a full copy)."""
    if volume.status not in ("available", "in-use"):
        raise InvalidState(
            f"cannot snapshot volume {volume.id}: it is {volume.status}",
            volume=volume.id,
            status=volume.status,
        )
    _no_pending_snapshot(session, volume, "snapshot")
    _fits(room, f"a snapshot of volume {volume.id}", None, volume.size_bytes)
    check_volume_bytes(session, volume.owner, volume.size_bytes)
    snapshot = Snapshot(
        name=name,
        volume_id=volume.id,
        owner=volume.owner,
        size_bytes=volume.size_bytes,
        status="pending",
        host_id=volume.host_id,
        comment=comment,
        progress=0.0,
    )
    session.add(snapshot)
    session.flush()
    return snapshot, _submit(session, registry, "snapshot.create", snapshot)


def _delete_snapshot(session: Session, registry: JobRegistry, snapshot: Snapshot) -> Job:
    """Queue deleting a snapshot, refused while a volume is a copy-on-write clone of it."""
    clones = list(
        session.scalars(select(Volume.id).where(Volume.cloned_from == snapshot.id).limit(5))
    )
    if clones:
        raise InvalidState(
            f"cannot delete snapshot {snapshot.id}: volume(s) {', '.join(clones)} are "
            "copy-on-write clones of it",
            snapshot=snapshot.id,
            volumes=clones,
        )
    move_snapshot(snapshot, "deleting")
    return _submit(session, registry, "snapshot.delete", snapshot)
