"""Compare volumes, snapshots, iSCSI targets and attachments with what the volume servers
and the instances' hosts really hold (the volume half of ``lamina reconcile``).

The database is read before and after the agents are asked, and a volume, snapshot or
instance is compared only if no job was in progress on it at either read and its record did
not change between them: a job that ran meanwhile would make the two sides disagree for a
moment. Each fix checks that again just before it acts.

What the database does not know is never deleted: a volume or snapshot on a server with no
record is reported for an administrator to decide. A fix only withdraws a target, detaches a
disk no record accounts for, or records what the backend shows.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from lamina.compute.models import Host, Instance
from lamina.compute.reconcile import Difference
from lamina.errors import GuestNotFound, InvalidState, LaminaError
from lamina.jobs.models import Job
from lamina.volumes.jobs import initiator_address
from lamina.volumes.models import Attachment, Snapshot, Volume
from lamina.wire.protocol import IQN_PREFIX, ExportInfo, SnapshotInfo, VolumeInfo

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)
_SOURCE = re.compile(re.escape(IQN_PREFIX) + r"(vol-[0-9a-f]+)")
#: A record's state as seen: anything a job changes (``updated_at`` moves on every write).
Stamp = tuple[Any, ...] | None


def volume_of_source(source: str | None) -> str | None:
    """The volume id in a guest disk's source (``iscsi://host:port/<iqn>/<lun>``), if it is
    one of Lamina's targets."""
    match = _SOURCE.search(source or "")
    return match[1] if match else None


@dataclass
class _View:
    """The database at one moment."""

    hosts: dict[str, Host]
    volumes: dict[str, Volume]
    snapshots: dict[str, Snapshot]
    attachments: dict[str, Attachment]  # by volume id
    instances: dict[str, Instance]
    busy: set[str]

    def volume_stamp(self, volume_id: str) -> Stamp:
        return _volume_stamp(self.volumes.get(volume_id), self.attachments.get(volume_id))

    def snapshot_stamp(self, snapshot_id: str) -> Stamp:
        snap = self.snapshots.get(snapshot_id)
        return (snap.status, _naive(snap.updated_at)) if snap else None


def _volume_stamp(volume: Volume | None, att: Attachment | None) -> Stamp:
    if volume is None:
        return None
    seen: tuple[Any, ...] = (volume.status, _naive(volume.updated_at))
    return seen + ((att.instance_id, att.device, att.status, att.iqn) if att else ())


def _naive(when: datetime | None) -> datetime | None:
    return when.replace(tzinfo=None) if when else None


def _read(svc: Services) -> _View:
    with svc.db.read() as s:
        return _View(
            {h.id: h for h in s.scalars(select(Host).where(Host.cert_fingerprint.is_not(None)))},
            {v.id: v for v in s.scalars(select(Volume))},
            {n.id: n for n in s.scalars(select(Snapshot))},
            {a.volume_id: a for a in s.scalars(select(Attachment))},
            {i.id: i for i in s.scalars(select(Instance))},
            _busy(s),
        )


def _busy(s: Any) -> set[str]:
    query = select(Job.target_id).where(Job.status.in_(("queued", "running")))
    return {t for t in s.scalars(query) if t}


@dataclass
class _Server:
    """What one host's agent holds."""

    host: Host
    volumes: dict[str, VolumeInfo]
    snapshots: dict[str, SnapshotInfo]
    exports: dict[str, ExportInfo]


def find_volume_differences(svc: Services) -> list[Difference]:
    """Every difference between the volume records and the hosts (unreachable hosts are
    skipped: the instances' reconcile reports them)."""
    before = _read(svc)
    servers: dict[str, _Server] = {}
    #: instance id -> its guest's disks (target -> source), None when the guest is gone;
    #: no entry when its host could not be asked.
    disks: dict[str, dict[str, str | None] | None] = {}
    for host in before.hosts.values():
        agent = svc.agents.for_host(host)
        try:
            servers[host.id] = _Server(
                host,
                {v.volume: v for v in agent.volume_list()},
                {n.snapshot: n for n in agent.snapshot_list()},
                {e.volume: e for e in agent.export_list()},
            )
            guests = {g.name for g in agent.guests()}
            for instance in before.instances.values():
                if instance.host_id != host.id or instance.status == "deleted":
                    continue
                disks[instance.id] = None
                if instance.domain_name in guests:
                    try:
                        found = agent.guest_disks(instance.domain_name)
                    except GuestNotFound:
                        continue
                    disks[instance.id] = {d.target: d.source for d in found}
        except LaminaError as exc:
            log.info("reconcile: host %s skipped: %s", host.name, exc.message)
            servers.pop(host.id, None)
    after = _read(svc)
    return _Compare(svc, before, after, servers, disks).run()


class _Compare:
    def __init__(
        self,
        svc: Services,
        before: _View,
        after: _View,
        servers: dict[str, _Server],
        disks: dict[str, dict[str, str | None] | None],
    ) -> None:
        self.svc, self.db, self.servers, self.disks = svc, after, servers, disks
        busy = before.busy | after.busy
        self.settled_volumes = {
            v
            for v in set(before.volumes) | set(after.volumes)
            if v not in busy and before.volume_stamp(v) == after.volume_stamp(v)
        }
        self.settled_snapshots = {
            n
            for n in set(before.snapshots) | set(after.snapshots)
            if n not in busy and before.snapshot_stamp(n) == after.snapshot_stamp(n)
        }
        self.busy = busy
        self.diffs: list[Difference] = []

    def settled(self, volume_id: str) -> bool:
        """No job on the volume, and its record as it was when the agents were asked (an
        id with no record at either read is settled: nothing is making it)."""
        unknown = volume_id not in self.db.volumes and volume_id not in self.busy
        return volume_id in self.settled_volumes or unknown

    def add(
        self,
        kind: str,
        resource: str,
        database: str,
        backend: str,
        fix: str | None = None,
        apply: Callable[[], None] | None = None,
    ) -> None:
        self.diffs.append(Difference(kind, resource, database, backend, fix, apply))

    def run(self) -> list[Difference]:
        for server in self.servers.values():
            for volume in self.db.volumes.values():
                if volume.host_id == server.host.id and self.settled(volume.id):
                    self.volume(server, volume)
            self.unknown_bytes(server)
            self.snapshots(server)
        self.stray_disks()
        return self.diffs

    # -- volumes -------------------------------------------------------------------------

    def volume(self, server: _Server, volume: Volume) -> None:
        what, where = f"volume {volume.id}", server.host.name
        info = server.volumes.get(volume.id)
        if info is None:
            if volume.status == "deleting":
                self.add(
                    "stuck_volume", what, "deleting", f"no volume on {where}",
                    "forget the record: its bytes are gone already",
                    self.forget_volume(volume.id),
                )  # fmt: skip
            elif volume.status != "error":
                self.add(
                    "missing_volume", what, volume.status, f"no volume on {where}",
                    "mark the volume error",
                    self.set_volume(
                        volume.id, status="error", error=f"its bytes are missing from {where}"
                    ),
                )  # fmt: skip
            return
        if volume.status in ("creating", "deleting"):
            verb = "creating" if volume.status == "creating" else "deleting"
            self.add(
                "stuck_volume", what, f"{volume.status}, no job", f"a volume on {where}",
                "mark the volume error (delete it, again)",
                self.set_volume(
                    volume.id, status="error", error=f"{verb} it did not finish; delete it"
                ),
            )  # fmt: skip
            return
        if volume.status == "extending":
            self.add(
                "stuck_volume", what, "extending, no job", f"{info.size_bytes} bytes on {where}",
                f"record the server's size ({info.size_bytes}) and mark the volume available",
                self.set_volume(volume.id, status="available", size_bytes=info.size_bytes),
            )  # fmt: skip
            return
        self.attachment(server, volume, self.db.attachments.get(volume.id))

    def attachment(self, server: _Server, volume: Volume, att: Attachment | None) -> None:
        what, where = f"volume {volume.id}", server.host.name
        exported = server.exports.get(volume.id)
        transitional = volume.status in ("attaching", "in-use", "detaching")
        if att is None:
            if exported is not None:
                self.add(
                    "stray_export", what, f"{volume.status}, no attachment",
                    f"target {exported.tid} on {where} admits {exported.initiator_address}",
                    "withdraw the target" + (", mark the volume available" if transitional else ""),
                    self.release(server, volume.id, drop=transitional),
                )  # fmt: skip
            elif transitional:
                self.add(
                    "stuck_volume", what, f"{volume.status}, no attachment",
                    f"not exported by {where}", "mark the volume available",
                    self.release(server, volume.id, drop=True),
                )  # fmt: skip
            return
        instance = self.db.instances.get(att.instance_id)
        recorded = f"{att.status} to {_name(instance, att.instance_id)} as {att.device}"
        gone = instance is None or instance.status == "deleted" or instance.host_id is None
        if not gone:
            assert instance is not None
            if instance.id in self.busy or instance.id not in self.disks:
                return  # its job owns it, or its host cannot be reached
            targets = self.disks[instance.id]
            source = targets.get(att.device) if targets is not None else None
            if volume_of_source(source) != volume.id:
                seen = "no such disk" if source is None else f"another disk: {source}"
                if targets is None:
                    seen = "no guest"
                self.add(
                    "stale_attachment", what, recorded, f"{seen} on the instance's host",
                    "withdraw the target, drop the attachment, mark the volume available",
                    self.release(server, volume.id, drop=True),
                )  # fmt: skip
                return
        else:
            self.add(
                "stale_attachment", what, recorded, "the instance is gone",
                "withdraw the target, drop the attachment, mark the volume available",
                self.release(server, volume.id, drop=True),
            )  # fmt: skip
            return
        host = self.db.hosts.get(instance.host_id or "")
        if exported is None:
            # Re-exporting would bring the disk back only if the guest's initiator logs in
            # again, which QEMU does not promise; an administrator detaches and attaches.
            self.add(
                "unexported_attachment", what, recorded,
                f"the guest has the disk but {where} exports no target: its I/O fails",
                None,
            )  # fmt: skip
            return
        expected = _address(host)
        if expected is not None and exported.initiator_address != expected:
            self.add(
                "stray_export", what, recorded,
                f"target {exported.tid} on {where} admits {exported.initiator_address}, "
                f"not the instance's host {expected}",
                "withdraw the target (it admits a host with no attachment)",
                self.release(server, volume.id, drop=False),
            )  # fmt: skip
            return
        if volume.status != "in-use" or att.status != "attached":
            self.add(
                "stuck_volume", what, f"{volume.status}, attachment {att.status}",
                f"exported by {where} and the guest has {att.device}",
                "mark the volume in-use, attached",
                self.set_volume(volume.id, status="in-use", attached=True),
            )  # fmt: skip

    def unknown_bytes(self, server: _Server) -> None:
        where = server.host.name
        for volume_id in server.volumes:
            record = self.db.volumes.get(volume_id)
            if (record and record.host_id == server.host.id) or not self.settled(volume_id):
                continue
            self.add(
                "orphan_volume", f"volume {volume_id} on {where}",
                "no record" if record is None else "recorded on another host",
                "a volume on " + where,
                None,  # never delete bytes the database does not know: an administrator decides
            )  # fmt: skip
        ours, grace = self.svc.deployment, self.svc.settings.reconcile.grace_seconds
        for volume_id, exported in server.exports.items():
            if volume_id in self.db.volumes or not self.settled(volume_id):
                continue
            if exported.deployment is not None and exported.deployment != ours:
                continue  # another deployment's: not ours to judge
            if exported.deployment is None:
                # Made before exports were tagged, or by hand: reported, never withdrawn.
                self.add(
                    "untagged_export", f"volume {volume_id} on {where}", "no record",
                    f"target {exported.tid} admits {exported.initiator_address}; "
                    "no deployment tag", None,
                )  # fmt: skip
                continue
            if exported.created_at is None or time.time() - exported.created_at < grace:
                continue  # too new to call a stray: its job may not have recorded it yet
            self.diffs.append(
                Difference(
                    "stray_export", f"volume {volume_id} on {where}", "no record",
                    f"target {exported.tid} admits {exported.initiator_address}",
                    "withdraw the target", self.unexport_unknown(server, volume_id),
                    stamp=repr(exported.created_at),
                )
            )  # fmt: skip

    def stray_disks(self) -> None:
        for instance_id, targets in self.disks.items():
            instance = self.db.instances.get(instance_id)
            if (
                targets is None
                or instance is None
                or instance_id in self.busy
                or instance.status == "deleted"
            ):
                continue
            for target, source in targets.items():
                volume_id = volume_of_source(source)
                if volume_id is None or not self.settled(volume_id):
                    continue
                att = self.db.attachments.get(volume_id)
                if att and att.instance_id == instance_id and att.device == target:
                    continue
                recorded = "no attachment"
                if att:
                    other = self.db.instances.get(att.instance_id)
                    recorded = f"attached to {_name(other, att.instance_id)} as {att.device}"
                self.add(
                    "stray_disk", f"instance {instance.name} ({instance_id}) disk {target}",
                    f"volume {volume_id}: {recorded}", f"the guest has {source}",
                    "detach the disk from the guest",
                    self.detach(instance, target, volume_id),
                )  # fmt: skip

    # -- snapshots -----------------------------------------------------------------------

    def snapshots(self, server: _Server) -> None:
        where = server.host.name
        for snap in self.db.snapshots.values():
            if snap.host_id != server.host.id or snap.id not in self.settled_snapshots:
                continue
            what = f"snapshot {snap.id}"
            present = snap.id in server.snapshots
            if not present and snap.status == "deleting":
                self.add(
                    "stuck_snapshot", what, "deleting, no job", f"no snapshot on {where}",
                    "forget the record: its bytes are gone already",
                    self.forget_snapshot(snap.id),
                )  # fmt: skip
            elif not present and snap.status != "error":
                self.add(
                    "missing_snapshot", what, snap.status, f"no snapshot on {where}",
                    "mark the snapshot error",
                    self.snapshot_error(snap.id, f"its bytes are missing from {where}"),
                )  # fmt: skip
            elif present and snap.status in ("pending", "deleting"):
                verb = "taking" if snap.status == "pending" else "deleting"
                self.add(
                    "stuck_snapshot", what, f"{snap.status}, no job", f"a snapshot on {where}",
                    "mark the snapshot error (delete it, again)",
                    self.snapshot_error(snap.id, f"{verb} it did not finish; delete it"),
                )  # fmt: skip
        for snap_id in server.snapshots:
            record = self.db.snapshots.get(snap_id)
            if (record and record.host_id == server.host.id) or snap_id in self.busy:
                continue
            self.add(
                "orphan_snapshot", f"snapshot {snap_id} on {where}",
                "no record" if record is None else "recorded on another host",
                "a snapshot on " + where, None,
            )  # fmt: skip

    # -- fixes ---------------------------------------------------------------------------
    # Each checks, just before acting, that the record is still as compared and no job
    # has started on it.

    def _unchanged(self, volume_id: str) -> None:
        stamp = self.db.volume_stamp(volume_id)
        with self.svc.db.read() as s:
            now = _volume_stamp(
                s.get(Volume, volume_id),
                s.scalar(select(Attachment).where(Attachment.volume_id == volume_id)),
            )
            busy = _busy(s)
        if now != stamp or volume_id in busy:
            raise InvalidState(f"volume {volume_id} changed meanwhile: reconcile again")

    def set_volume(
        self, volume_id: str, attached: bool = False, **values: Any
    ) -> Callable[[], None]:
        def apply() -> None:
            self._unchanged(volume_id)
            with self.svc.db.write() as s:
                volume = s.get(Volume, volume_id)
                if volume is None:
                    return
                values.setdefault("error", None)
                for key, value in values.items():
                    setattr(volume, key, value)
                if attached:
                    att = s.scalar(select(Attachment).where(Attachment.volume_id == volume_id))
                    if att is not None:
                        att.status = "attached"

        return apply

    def release(self, server: _Server, volume_id: str, drop: bool) -> Callable[[], None]:
        """Withdraw the volume's target; with ``drop``, also its attachment: available."""

        def apply() -> None:
            self._unchanged(volume_id)
            self.svc.agents.for_host(server.host).volume_unexport(volume_id)
            if not drop:
                return
            with self.svc.db.write() as s:
                s.execute(delete(Attachment).where(Attachment.volume_id == volume_id))
                volume = s.get(Volume, volume_id)
                if volume is not None:
                    volume.status = "available"
                    volume.error = None

        return apply

    def unexport_unknown(self, server: _Server, volume_id: str) -> Callable[[], None]:
        def apply() -> None:
            self._unchanged(volume_id)  # still no record, no job
            self.svc.agents.for_host(server.host).volume_unexport(volume_id)

        return apply

    def forget_volume(self, volume_id: str) -> Callable[[], None]:
        def apply() -> None:
            self._unchanged(volume_id)
            with self.svc.db.write() as s:
                s.execute(delete(Attachment).where(Attachment.volume_id == volume_id))
                s.execute(delete(Volume).where(Volume.id == volume_id))

        return apply

    def detach(self, instance: Instance, target: str, volume_id: str) -> Callable[[], None]:
        host = self.db.hosts[instance.host_id or ""]

        def apply() -> None:
            self._unchanged(volume_id)
            with self.svc.db.read() as s:
                if instance.id in _busy(s):
                    raise InvalidState(f"instance {instance.name} has a job: reconcile again")
            try:
                self.svc.agents.for_host(host).guest_detach_disk(instance.domain_name, target)
            except GuestNotFound:
                pass

        return apply

    def _snapshot_unchanged(self, snapshot_id: str) -> None:
        stamp = self.db.snapshot_stamp(snapshot_id)
        with self.svc.db.read() as s:
            snap = s.get(Snapshot, snapshot_id)
            now = (snap.status, _naive(snap.updated_at)) if snap else None
            busy = _busy(s)
        if now != stamp or snapshot_id in busy:
            raise InvalidState(f"snapshot {snapshot_id} changed meanwhile: reconcile again")

    def snapshot_error(self, snapshot_id: str, error: str) -> Callable[[], None]:
        def apply() -> None:
            self._snapshot_unchanged(snapshot_id)
            with self.svc.db.write() as s:
                snap = s.get(Snapshot, snapshot_id)
                if snap is not None:
                    snap.status, snap.error = "error", error

        return apply

    def forget_snapshot(self, snapshot_id: str) -> Callable[[], None]:
        def apply() -> None:
            self._snapshot_unchanged(snapshot_id)
            with self.svc.db.write() as s:
                s.execute(delete(Snapshot).where(Snapshot.id == snapshot_id))

        return apply


def _name(instance: Instance | None, instance_id: str) -> str:
    return f"instance {instance.name} ({instance_id})" if instance else f"instance {instance_id}"


def _address(host: Host | None) -> str | None:
    if host is None:
        return None
    try:
        return initiator_address(host)
    except OSError:
        return None
