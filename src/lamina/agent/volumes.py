"""The volume server: an agent role owning block volumes of one backend.

Every change runs the backend's command patterns (``lamina.agent.patterns``); exports are
tgt targets (``lamina.agent.tgt``). What a backend cannot tell (which volume a snapshot was
taken of, whether a copy was interrupted) is kept in small files under
``<agent data_dir>/volume-meta/``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lamina.agent.cache import DownloadTracker
from lamina.agent.patterns import SNAPSHOT_ID, VOLUME_ID, load_backend, parse_info, run_all
from lamina.agent.tgt import LUN, Export, Tgt
from lamina.errors import (
    ConfigError,
    Conflict,
    InvalidRequest,
    InvalidState,
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

log = logging.getLogger(__name__)

_PROGRESS_POLL = 0.2


@dataclass(frozen=True)
class VolumeConfig:
    """The ``[agent]`` settings of the volume server role."""

    enabled: bool = True
    backend: str = "qcow2"
    #: Folder of a file backend's volumes; None: ``<agent data_dir>/volumes``.
    root: Path | None = None
    #: host:port initiators connect to.
    portal: str = "127.0.0.1:3260"
    vg: str | None = None
    pool: str | None = None


class VolumeBackend(Protocol):
    """What the agent's volume routes drive: the volumes, snapshots and iSCSI exports of one
    host. ``VolumeServer`` (command patterns and tgt) is the real one; the unit tests' fake
    (``tests/fakes``) passes the same contract suite (``tests/contract``).

    Volume and snapshot ids are checked (``vol-<hex>``, ``snap-<hex>``): a bad one raises
    ``InvalidRequest``. An agent that is no volume server raises ``NotSupported``."""

    def free_bytes(self) -> int | None:
        """Free bytes where volumes are made; None when not known (no volume server, or
        volumes kept in a VG or pool)."""
        ...

    def volume_info(self, volume: str) -> VolumeInfo:
        """One volume; raises ``NotFound`` for an unknown one."""
        ...

    def volumes(self) -> list[VolumeInfo]:
        """Every volume of this backend."""
        ...

    def create(self, req: VolumeCreate) -> VolumeInfo:
        """An empty volume or one from a snapshot; an existing volume is answered as it is.
        Raises ``NotFound`` for an unknown snapshot, ``InvalidRequest`` for a size below the
        snapshot's, ``TooLarge`` when there is no room."""
        ...

    def delete(self, volume: str) -> None:
        """Remove the volume (an unknown one is a no-op; its snapshots stay); raises
        ``InvalidState`` while it is exported."""
        ...

    def extend(self, volume: str, req: VolumeExtend) -> VolumeInfo:
        """Grow the volume (the same size is a no-op). Raises ``NotFound``, ``InvalidRequest``
        for a smaller size, ``InvalidState`` while it is exported, ``TooLarge``."""
        ...

    def snapshot_info(self, snapshot: str) -> SnapshotInfo:
        """One snapshot; raises ``NotFound`` for an unknown one."""
        ...

    def snapshots(self) -> list[SnapshotInfo]:
        """Every snapshot of this backend."""
        ...

    def snapshot(self, volume: str, req: SnapshotCreate) -> SnapshotInfo:
        """An independent snapshot of the volume; the same one again is answered as it is.
        Raises ``NotFound`` for an unknown volume, ``Conflict`` when the id is another
        volume's snapshot."""
        ...

    def delete_snapshot(self, snapshot: str) -> None:
        """Remove the snapshot (an unknown one is a no-op); raises ``InvalidState`` while a
        copy-on-write clone depends on it."""
        ...

    def export(self, volume: str, initiator_address: str) -> ExportInfo:
        """Export the volume to that one initiator; the same export again is answered as it
        is. Raises ``NotFound``, ``InvalidRequest`` for a bad address, ``InvalidState`` when
        it is exported to another address."""
        ...

    def unexport(self, volume: str) -> None:
        """Withdraw the volume's export (idempotent)."""
        ...

    def allow(self, volume: str, initiator_address: str) -> ExportInfo:
        """Let another initiator log in to the volume's export too (idempotent). Raises
        ``NotFound`` when it is not exported, ``InvalidRequest`` for a bad address."""
        ...

    def disallow(self, volume: str, initiator_address: str) -> ExportInfo:
        """Let an initiator go (idempotent); ``InvalidState`` for the last one."""
        ...

    def exports(self) -> list[ExportInfo]:
        """The exports of this backend's volumes."""
        ...


class VolumeServer(VolumeBackend):
    """Volumes, snapshots and exports of one backend on this host."""

    def __init__(
        self,
        config: VolumeConfig,
        agent_root: Path,
        tracker: DownloadTracker,
        deployment: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.config = config
        #: The deployment exports are recorded for (``lamina.agent.identity``).
        self.deployment = deployment
        self.backend = load_backend(config.backend)
        self.tracker = tracker
        self.meta = agent_root / "volume-meta"
        self.meta.mkdir(parents=True, exist_ok=True)
        base: dict[str, object] = {"vg": config.vg, "pool": config.pool}
        if self.backend.root is None:
            folder = (config.root or agent_root / "volumes").resolve()
            folder.mkdir(parents=True, exist_ok=True)
            self.root = str(folder)
        else:
            try:
                self.root = self.backend.object_path(self.backend.root, base)
            except InvalidRequest as exc:
                raise ConfigError(
                    f"volume backend {config.backend}: {exc.message} "
                    "(set agent.volume_vg / agent.volume_pool)"
                ) from None
        self._base = {**base, "root": self.root}
        self.tgt = Tgt(self.backend)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    # -- helpers -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """One change at a time per volume or snapshot."""
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def volume_path(self, volume: str) -> str:
        _check(volume, VOLUME_ID, "volume")
        return self.backend.object_path(self.backend.volume_path, {**self._base, "volume": volume})

    def snapshot_path(self, snapshot: str) -> str:
        _check(snapshot, SNAPSHOT_ID, "snapshot")
        return self.backend.object_path(
            self.backend.snapshot_path, {**self._base, "snapshot": snapshot}
        )

    def _params(self, volume: str | None = None, snapshot: str | None = None) -> dict[str, object]:
        params: dict[str, object] = dict(self._base)
        if volume is not None:
            params.update(volume=volume, path=self.volume_path(volume))
        if snapshot is not None:
            params.update(snapshot=snapshot, snapshot_path=self.snapshot_path(snapshot))
        return params

    def _run(self, operation: str, params: dict[str, object]) -> str:
        commands = self.backend.render(operation, params)
        return run_all(commands, self.backend.timeout(operation))

    def _names(self, pattern: str, template: str) -> list[str]:
        """Ids of the existing objects whose id matches ``pattern``."""
        if self.backend.has("list"):
            lines = self._run("list", dict(self._base)).split()
            return sorted(n for n in lines if re.fullmatch(pattern, n))
        # A file backend: match the file names against the path template.
        name = template.rsplit("/", 1)[-1]
        regex = re.escape(name).replace(r"\{volume\}", "(?P<id>.+)")
        regex = regex.replace(r"\{snapshot\}", "(?P<id>.+)")
        found = []
        for entry in os.listdir(self.root):
            match = re.fullmatch(regex, entry)
            if match and re.fullmatch(pattern, match["id"]):
                found.append(match["id"])
        return sorted(found)

    def _exists(self, name: str, path: str, pattern: str, template: str) -> bool:
        if self.backend.file_based:
            return os.path.exists(path)
        return name in self._names(pattern, template)

    def _volume_exists(self, volume: str) -> bool:
        return self._exists(volume, self.volume_path(volume), VOLUME_ID, self.backend.volume_path)

    def _snapshot_exists(self, snapshot: str) -> bool:
        return self._exists(
            snapshot, self.snapshot_path(snapshot), SNAPSHOT_ID, self.backend.snapshot_path
        )

    def _info(self, name: str, path: str) -> tuple[int, int, str | None]:
        out = self._run("info", {**self._base, "name": name, "path": path})
        return parse_info(self.backend, out)

    def _marker(self, name: str) -> Path:
        """Present while ``name`` is being made: a crash leaves it, and the half-made
        object is removed and made again on the next request."""
        return self.meta / f"{name}.creating"

    def _pad(self, volume: str, size: int) -> None:
        """Grow a qcow2 file to its fully allocated size (see the qcow2 pattern file)."""
        if not (self.backend.has("measure") and self.backend.has("pad")):
            return
        measured = json.loads(self._run("measure", {"size": size}))
        params = {**self._params(volume), "export_bytes": int(measured["fully-allocated"])}
        self._run("pad", params)

    @contextlib.contextmanager
    def _progress(self, source: str, dest: str, total: int) -> Iterator[None]:
        """Report a copy into ``dest`` in the agent's DownloadTracker (``GET /downloads``)."""
        transfer = self.tracker.begin(source, total)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(_PROGRESS_POLL):
                with contextlib.suppress(OSError):
                    transfer.done = min(os.stat(dest).st_blocks * 512, total)

        watcher = threading.Thread(target=watch, name=f"progress-{source}", daemon=True)
        if self.backend.file_based:
            watcher.start()
        try:
            yield
        finally:
            done.set()
            if watcher.is_alive():
                watcher.join()
            self.tracker.end(transfer)

    def free_bytes(self) -> int | None:
        """Free bytes of the volume root's file system; None when this agent is no volume
        server or its backend keeps volumes elsewhere (a VG, a pool)."""
        if not self.config.enabled or not self.backend.file_based:
            return None
        return shutil.disk_usage(self.root).free

    def _require_room(self, name: str, needed: int) -> None:
        """Refuse to make ``needed`` more bytes of ``name`` when the volume root has less
        free: a volume (or the part of it that grows, or a snapshot's copy) must fit the
        disk it lives on, else it fails once a guest fills it."""
        free = self.free_bytes()
        if free is not None and needed > free:
            raise TooLarge(
                f"{name} needs {needed} bytes but this host's volume root {self.root} has "
                f"only {free} bytes free",
                limit=free,
                requested=needed,
            )

    def _require_enabled(self) -> None:
        if not self.config.enabled:
            raise NotSupported("this agent is not a volume server ([agent] volumes = false)")

    # -- volumes -------------------------------------------------------------------------

    def volume_info(self, volume: str) -> VolumeInfo:
        """Raises ``NotFound`` for an unknown volume."""
        if not self._volume_exists(volume) or self._marker(volume).exists():
            raise NotFound(f"volume {volume} does not exist on this host", volume=volume)
        size, allocated, backing = self._info(volume, self.volume_path(volume))
        clone = re.search(SNAPSHOT_ID[1:-1], backing) if backing else None
        return VolumeInfo(
            volume=volume,
            size_bytes=size,
            allocated_bytes=allocated,
            backend=self.backend.name,
            export_format=self.backend.export_format,
            cloned_from=clone[0] if clone else None,
        )

    def volumes(self) -> list[VolumeInfo]:
        self._require_enabled()
        infos = []
        for volume in self._names(VOLUME_ID, self.backend.volume_path):
            with contextlib.suppress(NotFound):
                infos.append(self.volume_info(volume))
        return infos

    def create(self, req: VolumeCreate) -> VolumeInfo:
        """Create an empty volume, or one from a snapshot: copy-on-write when ``req.clone``
        and the backend can, else a full copy (reported in ``GET /downloads`` as
        ``volume:<id>``). An existing volume is answered as it is (a retried request);
        one a crash left half-made is made again.

        Raises ``NotFound`` for an unknown snapshot, ``InvalidRequest`` for a size below
        the snapshot's, ``CommandFailed`` when a command fails (the volume is removed)."""
        self._require_enabled()
        volume = req.volume
        with self._locked(volume):
            marker = self._marker(volume)
            if self._volume_exists(volume):
                if not marker.exists():
                    return self.volume_info(volume)
                log.warning("volume %s was left half-made; making it again", volume)
                self._run("delete", self._params(volume))
            self._require_room(f"volume {volume}", req.size_bytes)
            marker.touch()
            try:
                self._make(req)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._run("delete", self._params(volume))
                raise
            marker.unlink()
            return self.volume_info(volume)

    def _make(self, req: VolumeCreate) -> None:
        volume, size = req.volume, req.size_bytes
        if req.snapshot is None:
            self._run("create", {**self._params(volume), "size": size})
            self._pad(volume, size)
            return
        snap = self.snapshot_info(req.snapshot)
        if size < snap.size_bytes:
            raise InvalidRequest(
                f"a volume from snapshot {req.snapshot} needs at least {snap.size_bytes} bytes",
                size_bytes=size,
            )
        params = {**self._params(volume, req.snapshot), "size": size}
        if req.clone and self.backend.can_clone:
            self._run("clone_from_snapshot", params)
        else:
            with self._progress(f"volume:{volume}", self.volume_path(volume), snap.allocated_bytes):
                self._run("create_from_snapshot", params)
        current, _allocated, _backing = self._info(volume, self.volume_path(volume))
        if current < size:
            self._run("extend", params)
        self._pad(volume, size)

    def delete(self, volume: str) -> None:
        """Remove the volume (never overwritten); an unknown one is a no-op. Raises
        ``InvalidState`` while it is exported. Its snapshots stay."""
        self._require_enabled()
        with self._locked(volume):
            path = self.volume_path(volume)
            if self.tgt.find(volume, path) is not None:
                raise InvalidState(
                    f"volume {volume} is exported: unexport it before deleting", volume=volume
                )
            if self._volume_exists(volume):
                self._run("delete", self._params(volume))
            self._marker(volume).unlink(missing_ok=True)

    def extend(self, volume: str, req: VolumeExtend) -> VolumeInfo:
        """Grow the volume to ``req.size_bytes`` (the same size is a no-op). Raises
        ``InvalidRequest`` for a smaller size, ``InvalidState`` while it is exported (a
        target's LUN keeps the size it was exported with)."""
        self._require_enabled()
        with self._locked(volume):
            info = self.volume_info(volume)
            if req.size_bytes == info.size_bytes:
                return info
            if req.size_bytes < info.size_bytes:
                raise InvalidRequest(
                    f"volume {volume} has {info.size_bytes} bytes; volumes only grow",
                    volume=volume,
                )
            if self.tgt.find(volume, self.volume_path(volume)) is not None:
                raise InvalidState(
                    f"volume {volume} is exported: detach it before extending", volume=volume
                )
            self._require_room(f"volume {volume}", req.size_bytes - info.size_bytes)
            self._run("extend", {**self._params(volume), "size": req.size_bytes})
            self._pad(volume, req.size_bytes)
            return self.volume_info(volume)

    # -- snapshots -----------------------------------------------------------------------

    def _snapshot_volume(self, snapshot: str) -> str | None:
        try:
            return str(json.loads((self.meta / f"{snapshot}.json").read_text())["volume"])
        except (OSError, ValueError, KeyError):
            return None

    def snapshot_info(self, snapshot: str) -> SnapshotInfo:
        """Raises ``NotFound`` for an unknown snapshot."""
        if not self._snapshot_exists(snapshot) or self._marker(snapshot).exists():
            raise NotFound(f"snapshot {snapshot} does not exist on this host", snapshot=snapshot)
        size, allocated, _backing = self._info(snapshot, self.snapshot_path(snapshot))
        return SnapshotInfo(
            snapshot=snapshot,
            volume=self._snapshot_volume(snapshot) or "",
            size_bytes=size,
            allocated_bytes=allocated,
        )

    def snapshots(self) -> list[SnapshotInfo]:
        self._require_enabled()
        infos = []
        for snapshot in self._names(SNAPSHOT_ID, self.backend.snapshot_path):
            with contextlib.suppress(NotFound):
                infos.append(self.snapshot_info(snapshot))
        return infos

    def snapshot(self, volume: str, req: SnapshotCreate) -> SnapshotInfo:
        """Take an independent snapshot of the volume (a full copy on file backends,
        reported in ``GET /downloads`` as ``snapshot:<id>``); the same snapshot again is
        answered as it is. Raises ``NotFound`` for an unknown volume, ``Conflict`` when the
        snapshot id belongs to another volume's snapshot."""
        self._require_enabled()
        snapshot = req.snapshot
        with self._locked(snapshot):
            marker = self._marker(snapshot)
            if self._snapshot_exists(snapshot):
                if not marker.exists():
                    info = self.snapshot_info(snapshot)
                    if info.volume != volume:
                        raise Conflict(
                            f"snapshot {snapshot} is of volume {info.volume}", snapshot=snapshot
                        )
                    return info
                self._run("delete_snapshot", self._params(snapshot=snapshot))
            source = self.volume_info(volume)
            self._require_room(f"snapshot {snapshot}", source.allocated_bytes)
            marker.touch()
            (self.meta / f"{snapshot}.json").write_text(json.dumps({"volume": volume}))
            try:
                with self._progress(
                    f"snapshot:{snapshot}", self.snapshot_path(snapshot), source.allocated_bytes
                ):
                    self._run("snapshot", self._params(volume, snapshot))
            except BaseException:
                with contextlib.suppress(Exception):
                    self._run("delete_snapshot", self._params(snapshot=snapshot))
                (self.meta / f"{snapshot}.json").unlink(missing_ok=True)
                marker.unlink(missing_ok=True)
                raise
            marker.unlink()
            return self.snapshot_info(snapshot)

    def delete_snapshot(self, snapshot: str) -> None:
        """Remove the snapshot; an unknown one is a no-op. Raises ``InvalidState`` while a
        copy-on-write clone depends on it."""
        self._require_enabled()
        with self._locked(snapshot):
            if not self._snapshot_exists(snapshot):
                (self.meta / f"{snapshot}.json").unlink(missing_ok=True)
                return
            clones = [v.volume for v in self.volumes() if v.cloned_from == snapshot]
            if clones:
                raise InvalidState(
                    f"snapshot {snapshot} is the base of volume(s) {', '.join(clones)}",
                    snapshot=snapshot,
                )
            self._run("delete_snapshot", self._params(snapshot=snapshot))
            (self.meta / f"{snapshot}.json").unlink(missing_ok=True)
            self._marker(snapshot).unlink(missing_ok=True)

    # -- exports -------------------------------------------------------------------------

    def _export_record(self, volume: str) -> Path:
        """Who asked for the volume's export and when: tgt keeps no such thing, so the
        agent does (``<volume>.export``, written after the target is made, removed after it
        is withdrawn). An export without one is untagged."""
        return self.meta / f"{volume}.export"

    def _read_export_record(self, volume: str) -> tuple[str | None, float | None]:
        try:
            data = json.loads(self._export_record(volume).read_text())
            return data.get("deployment"), float(data["created"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, None

    def _export_info(self, export: Export) -> ExportInfo:
        deployment, created = self._read_export_record(export.volume)
        return ExportInfo(
            volume=export.volume,
            iqn=export.iqn,
            lun=LUN,
            tid=export.tid,
            portal=self.config.portal,
            initiator_address=export.initiator_address,
            export_format=self.backend.export_format,
            deployment=deployment,
            created_at=created,
        )

    def export(self, volume: str, initiator_address: str) -> ExportInfo:
        """Export the volume as an iSCSI target that only ``initiator_address`` may use;
        the same export again is answered as it is. Raises ``NotFound`` for an unknown
        volume, ``InvalidRequest`` for a bad address, ``InvalidState`` when it is exported
        to another address."""
        self._require_enabled()
        try:
            address = str(ipaddress.ip_address(initiator_address))
        except ValueError:
            raise InvalidRequest(
                f"{initiator_address!r} is not an IP address", initiator_address=initiator_address
            ) from None
        with self._locked(volume):
            self.volume_info(volume)
            export = self.tgt.export(volume, self.volume_path(volume), address, self._base_str())
            if self._read_export_record(volume)[1] is None:  # the same export again keeps it
                tag = {"deployment": self.deployment(), "created": time.time()}
                self._export_record(volume).write_text(json.dumps(tag))
            return self._export_info(export)

    def allow(self, volume: str, initiator_address: str) -> ExportInfo:
        return self._acl(self.tgt.allow, volume, initiator_address)

    def disallow(self, volume: str, initiator_address: str) -> ExportInfo:
        return self._acl(self.tgt.disallow, volume, initiator_address)

    def _acl(self, change: Any, volume: str, initiator_address: str) -> ExportInfo:
        self._require_enabled()
        try:
            address = str(ipaddress.ip_address(initiator_address))
        except ValueError:
            raise InvalidRequest(
                f"{initiator_address!r} is not an IP address", initiator_address=initiator_address
            ) from None
        with self._locked(volume):
            export = change(volume, self.volume_path(volume), address, self._base_str())
            return self._export_info(export)

    def unexport(self, volume: str) -> None:
        """Remove the volume's target (idempotent)."""
        self._require_enabled()
        with self._locked(volume):
            self.tgt.unexport(volume, self.volume_path(volume))
            self._export_record(volume).unlink(missing_ok=True)

    def exports(self) -> list[ExportInfo]:
        self._require_enabled()
        names = self._names(VOLUME_ID, self.backend.volume_path)
        paths = {v: self.volume_path(v) for v in names}
        return [self._export_info(e) for e in self.tgt.exports(paths)]

    def _base_str(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._base.items() if v is not None}


def _check(value: str, pattern: str, what: str) -> None:
    if not re.fullmatch(pattern, value):
        raise InvalidRequest(f"{value!r} is not a {what} id", **{what: value})
