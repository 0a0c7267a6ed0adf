"""``FakeVolumeBackend``: volumes, snapshots and exports as records, with the volume
server's rules (``lamina.agent.volumes.VolumeServer``).

No bytes are kept and no command runs: sizes are numbers, an export is a record with a
target id. It refuses what the real one refuses (a smaller size, deleting or extending an
exported volume, another address for an export, a snapshot id of another volume, deleting
a snapshot a clone depends on, ids that are not ``vol-<hex>`` / ``snap-<hex>``).

A test makes the next call of a method fail with ``fail_next("create", SomeError(...))``.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable
from typing import Literal

from lamina.agent.patterns import SNAPSHOT_ID, VOLUME_ID
from lamina.agent.tgt import LUN, iqn_for
from lamina.agent.volumes import VolumeBackend
from lamina.errors import (
    Conflict,
    InvalidRequest,
    InvalidState,
    LaminaError,
    NotFound,
    NotSupported,
    TooLarge,
)
from lamina.wire.protocol import (
    ExportInfo,
    SnapshotCreate,
    SnapshotInfo,
    VolumeCreate,
    VolumeExtend,
    VolumeInfo,
)


class FakeVolumeBackend(VolumeBackend):
    """An in-memory volume server. ``free`` bounds what may be made (None: unbounded, as
    for a VG); ``calls`` records every interface call by method name."""

    def __init__(
        self,
        backend: str = "qcow2",
        export_format: Literal["raw", "qcow2"] = "qcow2",
        can_clone: bool = True,
        portal: str = "127.0.0.1:3260",
        free: int | None = None,
        enabled: bool = True,
        deployment: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.backend = backend
        self.export_format: Literal["raw", "qcow2"] = export_format
        self.can_clone = can_clone
        self.portal = portal
        self.free = free
        self.enabled = enabled
        self.deployment = deployment
        self.volume_records: dict[str, VolumeInfo] = {}
        self.snapshot_records: dict[str, SnapshotInfo] = {}
        self.export_records: dict[str, ExportInfo] = {}
        #: The initiators each export lets in (the first is its ``initiator_address``).
        self.acls: dict[str, list[str]] = {}
        self.calls: list[str] = []
        self._failures: dict[str, LaminaError] = {}
        self._lock = threading.RLock()

    # -- for tests -----------------------------------------------------------------------

    def fail_next(self, method: str, error: LaminaError) -> None:
        """Make the next call of ``method`` raise ``error`` (and do nothing else)."""
        self._failures[method] = error

    def _enter(self, method: str, require_enabled: bool = True) -> None:
        self.calls.append(method)
        error = self._failures.pop(method, None)
        if error is not None:
            raise error
        if require_enabled and not self.enabled:
            raise NotSupported("this agent is not a volume server ([agent] volumes = false)")

    def _require_room(self, name: str, needed: int) -> None:
        if self.free is not None and needed > self.free:
            raise TooLarge(
                f"{name} needs {needed} bytes but this host's volume root has only "
                f"{self.free} bytes free",
                limit=self.free,
                requested=needed,
            )

    # -- the VolumeBackend interface -----------------------------------------------------

    def free_bytes(self) -> int | None:
        self._enter("free_bytes", require_enabled=False)
        return self.free if self.enabled else None

    def volume_info(self, volume: str) -> VolumeInfo:
        with self._lock:
            self._enter("volume_info", require_enabled=False)
            return self._volume(volume)

    def _volume(self, volume: str) -> VolumeInfo:
        _check(volume, VOLUME_ID, "volume")
        try:
            return self.volume_records[volume]
        except KeyError:
            raise NotFound(f"volume {volume} does not exist on this host", volume=volume) from None

    def volumes(self) -> list[VolumeInfo]:
        with self._lock:
            self._enter("volumes")
            return [self.volume_records[v] for v in sorted(self.volume_records)]

    def create(self, req: VolumeCreate) -> VolumeInfo:
        with self._lock:
            self._enter("create")
            volume = req.volume
            _check(volume, VOLUME_ID, "volume")
            if volume in self.volume_records:
                return self.volume_records[volume]
            self._require_room(f"volume {volume}", req.size_bytes)
            cloned_from = None
            if req.snapshot is not None:
                snap = self._snapshot(req.snapshot)
                if req.size_bytes < snap.size_bytes:
                    raise InvalidRequest(
                        f"a volume from snapshot {req.snapshot} needs at least "
                        f"{snap.size_bytes} bytes",
                        size_bytes=req.size_bytes,
                    )
                if req.clone and self.can_clone:
                    cloned_from = req.snapshot
            info = VolumeInfo(
                volume=volume,
                size_bytes=req.size_bytes,
                allocated_bytes=0,
                backend=self.backend,
                export_format=self.export_format,
                cloned_from=cloned_from,
            )
            self.volume_records[volume] = info
            return info

    def delete(self, volume: str) -> None:
        with self._lock:
            self._enter("delete")
            _check(volume, VOLUME_ID, "volume")
            if volume in self.export_records:
                raise InvalidState(
                    f"volume {volume} is exported: unexport it before deleting", volume=volume
                )
            self.volume_records.pop(volume, None)

    def extend(self, volume: str, req: VolumeExtend) -> VolumeInfo:
        with self._lock:
            self._enter("extend")
            info = self._volume(volume)
            if req.size_bytes == info.size_bytes:
                return info
            if req.size_bytes < info.size_bytes:
                raise InvalidRequest(
                    f"volume {volume} has {info.size_bytes} bytes; volumes only grow",
                    volume=volume,
                )
            if volume in self.export_records:
                raise InvalidState(
                    f"volume {volume} is exported: detach it before extending", volume=volume
                )
            self._require_room(f"volume {volume}", req.size_bytes - info.size_bytes)
            info = info.model_copy(update={"size_bytes": req.size_bytes})
            self.volume_records[volume] = info
            return info

    def snapshot_info(self, snapshot: str) -> SnapshotInfo:
        with self._lock:
            self._enter("snapshot_info", require_enabled=False)
            return self._snapshot(snapshot)

    def _snapshot(self, snapshot: str) -> SnapshotInfo:
        _check(snapshot, SNAPSHOT_ID, "snapshot")
        try:
            return self.snapshot_records[snapshot]
        except KeyError:
            raise NotFound(
                f"snapshot {snapshot} does not exist on this host", snapshot=snapshot
            ) from None

    def snapshots(self) -> list[SnapshotInfo]:
        with self._lock:
            self._enter("snapshots")
            return [self.snapshot_records[s] for s in sorted(self.snapshot_records)]

    def snapshot(self, volume: str, req: SnapshotCreate) -> SnapshotInfo:
        with self._lock:
            self._enter("snapshot")
            snapshot = req.snapshot
            _check(snapshot, SNAPSHOT_ID, "snapshot")
            existing = self.snapshot_records.get(snapshot)
            if existing is not None:
                if existing.volume != volume:
                    raise Conflict(
                        f"snapshot {snapshot} is of volume {existing.volume}", snapshot=snapshot
                    )
                return existing
            source = self._volume(volume)
            self._require_room(f"snapshot {snapshot}", source.allocated_bytes)
            info = SnapshotInfo(
                snapshot=snapshot,
                volume=volume,
                size_bytes=source.size_bytes,
                allocated_bytes=source.allocated_bytes,
            )
            self.snapshot_records[snapshot] = info
            return info

    def delete_snapshot(self, snapshot: str) -> None:
        with self._lock:
            self._enter("delete_snapshot")
            _check(snapshot, SNAPSHOT_ID, "snapshot")
            clones = sorted(
                v.volume for v in self.volume_records.values() if v.cloned_from == snapshot
            )
            if snapshot in self.snapshot_records and clones:
                raise InvalidState(
                    f"snapshot {snapshot} is the base of volume(s) {', '.join(clones)}",
                    snapshot=snapshot,
                )
            self.snapshot_records.pop(snapshot, None)

    def export(self, volume: str, initiator_address: str) -> ExportInfo:
        with self._lock:
            self._enter("export")
            try:
                address = str(ipaddress.ip_address(initiator_address))
            except ValueError:
                raise InvalidRequest(
                    f"{initiator_address!r} is not an IP address",
                    initiator_address=initiator_address,
                ) from None
            self._volume(volume)
            existing = self.export_records.get(volume)
            if existing is not None:
                if existing.initiator_address == address:
                    return existing
                raise InvalidState(
                    f"volume {volume} is already exported (target {existing.tid}, to "
                    f"{existing.initiator_address}); unexport it first",
                    volume=volume,
                )
            used = {e.tid for e in self.export_records.values()}
            info = ExportInfo(
                volume=volume,
                iqn=iqn_for(volume),
                lun=LUN,
                tid=next(n for n in range(1, len(used) + 2) if n not in used),
                portal=self.portal,
                initiator_address=address,
                export_format=self.export_format,
                deployment=self.deployment(),
                created_at=time.time(),
            )
            self.export_records[volume] = info
            return info

    def unexport(self, volume: str) -> None:
        with self._lock:
            self._enter("unexport")
            _check(volume, VOLUME_ID, "volume")
            self.export_records.pop(volume, None)
            self.acls.pop(volume, None)

    def allow(self, volume: str, initiator_address: str) -> ExportInfo:
        return self._acl("allow", volume, initiator_address)

    def disallow(self, volume: str, initiator_address: str) -> ExportInfo:
        return self._acl("disallow", volume, initiator_address)

    def _acl(self, op: str, volume: str, initiator_address: str) -> ExportInfo:
        with self._lock:
            self._enter(op)
            address = str(ipaddress.ip_address(initiator_address))
            existing = self.export_records.get(volume)
            if existing is None:
                raise NotFound(f"volume {volume} is not exported", volume=volume)
            acl = self.acls.setdefault(volume, [existing.initiator_address])
            if op == "allow" and address not in acl:
                acl.append(address)
            elif op == "disallow" and address in acl:
                if acl == [address]:
                    raise InvalidState(f"{address} is the only initiator of volume {volume}")
                acl.remove(address)
            info = existing.model_copy(update={"initiator_address": acl[0]})
            self.export_records[volume] = info
            return info

    def exports(self) -> list[ExportInfo]:
        with self._lock:
            self._enter("exports")
            return [self.export_records[v] for v in sorted(self.export_records)]


def _check(value: str, pattern: str, what: str) -> None:
    if not re.fullmatch(pattern, value):
        raise InvalidRequest(f"{value!r} is not a {what} id", **{what: value})
