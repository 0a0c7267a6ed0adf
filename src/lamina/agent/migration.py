"""Live migration on this host: the source half (a thread runs the hypervisor's migration,
the manager polls it, tunes it and may abort it) and the destination half (disks made
empty beforehand, the source's definition given this host's paths, the guest's taps
plugged once it runs here). docs/migration.md has the whole sequence.

The manager's job steps are idempotent, and so are these: asking to start a migration that
runs answers it; a migration this agent no longer remembers (it restarted) is found again
in the hypervisor's job statistics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lamina.agent.drivers.base import MigrationProgress, MigrationRequest
from lamina.agent.guest_nics import taps, write_nics
from lamina.agent.migration_tls import peer_uri, pki_dir
from lamina.commands import run
from lamina.errors import GuestNotFound, InvalidRequest, InvalidState, LaminaError
from lamina.wire.protocol import (
    DiskCreate,
    IncomingPrepare,
    IncomingPrepared,
    IncomingStatus,
    MigrationDisk,
    MigrationSource,
    MigrationStart,
    MigrationStatus,
)

if TYPE_CHECKING:
    from lamina.agent.cache import ImageCache
    from lamina.agent.disks import DiskStore
    from lamina.agent.drivers.base import DiskSpec, Hypervisor
    from lamina.agent.networks import NetworkHost
    from lamina.wire.protocol import GuestDefinition, GuestNic

log = logging.getLogger(__name__)

#: Seconds ``qemu-img info`` may take.
COMMAND_TIMEOUT = 60.0


class Agent(Protocol):
    """What of the agent (``lamina.agent.server.Agent``) its migrations use."""

    root: Path
    hypervisor: Hypervisor
    disks: DiskStore
    cache: ImageCache
    network: NetworkHost

    def disk_specs(self, name: str, spec: GuestDefinition) -> list[DiskSpec]: ...

    def nics(self, name: str) -> list[GuestNic]: ...

    def undefine(self, name: str) -> None: ...


@dataclass
class _Run:
    """One migration this agent started: its thread and how it ended."""

    thread: threading.Thread
    max_downtime_ms: int
    error: str | None = None
    done: bool = False
    aborted: bool = False
    last: MigrationProgress | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Migrations:
    """The migrations of one agent's guests (both halves)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    # -- the source --------------------------------------------------------------------

    def source(self, name: str, cold: bool = False) -> MigrationSource:
        """The running guest's migratable definition and its own disks (files in its
        folder: instance layer, config disk, overlay), each with its virtual size. With
        ``cold``, a stopped guest is first started paused (its vCPUs never run): it moves
        like a running one and is powered off on arrival."""
        hv = self.agent.hypervisor
        if cold and hv.info(name).state == "stopped":
            hv.start(name, paused=True)
        xml = hv.migratable_xml(name)
        folder = self.agent.disks.guest_dir(name)
        disks = []
        readonly = _readonly_disks(xml)
        for target, path in _file_disks(xml).items():
            file = Path(path)
            if file.parent != folder or file.suffix != ".img":
                continue  # a cached layer: the destination has its own copy
            info = _image_info(file)
            backing = info.get("backing-filename")
            disks.append(
                MigrationDisk(
                    name=file.stem,
                    target=target,
                    size_bytes=int(info["virtual-size"]),
                    format="qcow2" if info.get("format") == "qcow2" else "raw",
                    backing=Path(str(backing)).name if backing else None,
                    readonly=target in readonly,
                )
            )
        return MigrationSource(xml=xml, disks=disks)

    def start(self, name: str, req: MigrationStart) -> MigrationStatus:
        """Start moving the guest (in a thread) unless a migration of it runs already;
        answer its status."""
        with self._lock:
            current = self._runs.get(name)
            if current is not None and current.thread.is_alive():
                return self.status(name)
            if self.agent.hypervisor.migration_progress(name).active:
                raise InvalidState(f"guest {name} has a hypervisor job running", guest=name)
            request = MigrationRequest(
                dest_uri=peer_uri(req.dest_uri, pki_dir(self.agent.root))
                if req.tls
                else req.dest_uri,
                xml=req.xml,
                migrate_uri=req.migrate_uri,
                copy_disks=tuple(req.copy_disks),
                tls=req.tls,
                max_downtime_ms=req.max_downtime_ms,
                auto_converge=req.auto_converge,
                paused=req.paused,
            )
            thread = threading.Thread(
                target=self._migrate, args=(name, request), daemon=True, name=f"migrate-{name}"
            )
            self._runs[name] = _Run(thread, req.max_downtime_ms)
            thread.start()
        log.info("migrating %s to %s", name, req.dest_uri)
        return self.status(name)

    def _migrate(self, name: str, request: MigrationRequest) -> None:
        run_ = self._runs[name]
        try:
            self.agent.hypervisor.migrate(name, request)
        except Exception as exc:  # noqa: BLE001 - reported through status()
            run_.error = exc.message if isinstance(exc, LaminaError) else str(exc)
            log.warning("migration of %s failed: %s", name, run_.error)
        finally:
            run_.done = True

    def status(self, name: str) -> MigrationStatus:
        """The guest's migration as this host knows it (see ``MigrationStatus``)."""
        run_ = self._runs.get(name)
        hv = self.agent.hypervisor
        progress: MigrationProgress | None = None
        with contextlib.suppress(GuestNotFound, InvalidState):
            progress = hv.migration_progress(name)
        if run_ is None:
            # Not started by this agent process (it restarted): the hypervisor still knows.
            if progress is not None and progress.active:
                return _status("running", progress, None, None)
            return MigrationStatus(state="none")
        if progress is not None and progress.active:
            run_.last = progress
        if not run_.done:
            return _status("running", run_.last, run_.max_downtime_ms, None)
        if run_.error is None:
            return _status("completed", run_.last, run_.max_downtime_ms, None)
        state = "cancelled" if run_.aborted else "failed"
        return _status(state, run_.last, run_.max_downtime_ms, run_.error)

    def tune(self, name: str, max_downtime_ms: int) -> MigrationStatus:
        """Allow the running migration a longer pause at the switch."""
        self.agent.hypervisor.set_migration_downtime(name, max_downtime_ms)
        run_ = self._runs.get(name)
        if run_ is not None:
            run_.max_downtime_ms = max_downtime_ms
        return self.status(name)

    def abort(self, name: str) -> None:
        """Abort the guest's migration: it keeps running here (none running: a no-op)."""
        run_ = self._runs.get(name)
        if run_ is not None and not run_.done:
            run_.aborted = True
        try:
            self.agent.hypervisor.abort_migration(name)
        except GuestNotFound:
            return
        if run_ is not None:
            run_.thread.join(30)

    def forget(self, name: str, keep_disks: bool = False) -> None:
        """The guest left this host: its definition goes, and its files unless
        ``keep_disks`` (shared storage: they are the destination's now). ``InvalidState``
        while it still runs here."""
        hv = self.agent.hypervisor
        with contextlib.suppress(GuestNotFound):
            if hv.info(name).state in ("running", "paused") and not hv.incoming(name):
                raise InvalidState(
                    f"guest {name} still runs on this host: it has not left", guest=name
                )
        if keep_disks:
            hv.undefine(name)
        else:
            self.agent.undefine(name)
        self._runs.pop(name, None)

    # -- the destination ---------------------------------------------------------------

    def presence(self, name: str) -> IncomingStatus:
        """Whether the guest is here as a migration's incoming half (paused, waiting for
        its state) or as a guest of this host; ``GuestNotFound`` if it is not here."""
        hv = self.agent.hypervisor
        info = hv.info(name)
        waiting = info.state == "paused" and hv.incoming(name)
        return IncomingStatus(presence="incoming" if waiting else "arrived", state=info.state)

    def prepare(self, name: str, req: IncomingPrepare) -> IncomingPrepared:
        """Make the guest's own disks empty with their sizes (unless storage is shared),
        and answer the source's definition with this host's paths. Again from scratch
        when asked again, unless the guest already runs here (``InvalidState``)."""
        hv = self.agent.hypervisor
        with contextlib.suppress(GuestNotFound):
            state = hv.info(name).state
            if state in ("running", "paused") and not hv.incoming(name):
                raise InvalidState(f"guest {name} already runs on this host", guest=name)
            hv.undefine(name)  # a leftover of an earlier attempt
        store = self.agent.disks
        folder = store.guest_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        if not req.shared:
            for disk in req.disks:
                store.remove(name, disk.name)  # stale bytes would survive an incremental copy
                if disk.readonly:
                    if disk.files is None:
                        raise InvalidRequest(f"read-only disk {disk.name} needs its files")
                    store.create(
                        DiskCreate(guest=name, name=disk.name, format="raw", files=disk.files),
                        None,
                    )
                    continue
                backing = None
                if disk.backing:
                    backing = Path(self.agent.cache.check(disk.backing).path)
                store.create(
                    DiskCreate(
                        guest=name,
                        name=disk.name,
                        size_bytes=disk.size_bytes,
                        format=disk.format,
                        backing=disk.backing,
                    ),
                    backing,
                )
        specs = self.agent.disk_specs(name, req.definition)
        paths = {d.target: d.path for d in specs}
        kernel = initrd = None
        if req.definition.kernel:
            kernel = self.agent.cache.check(req.definition.kernel).path
        if req.definition.initrd:
            initrd = self.agent.cache.check(req.definition.initrd).path
        xml = rewrite_paths(req.xml, paths, kernel, initrd, str(folder / "console.log"))
        write_nics(folder, req.definition.nics)
        copy = [] if req.shared else [d.target for d in req.disks if not d.readonly]
        return IncomingPrepared(xml=xml, copy_disks=copy)

    def finish(self, name: str) -> MigrationStatus:
        """Once the source says the guest left it: put its taps into their bridges and
        answer the completed migration's figures (its downtime). ``InvalidState`` unless
        the guest is here."""
        info = self.agent.hypervisor.info(name)
        if info.state not in ("running", "paused"):
            raise InvalidState(f"guest {name} is {info.state} here, not running", guest=name)
        nics = self.agent.nics(name)
        if nics:
            test = self.agent.hypervisor.capabilities.domain_type == "test"
            self.agent.network.plug(taps(nics), missing_ok=test)
        try:
            done = self.agent.hypervisor.migration_progress(name, completed=True)
        except LaminaError:
            done = None
        return _status("completed", done, None, None)

    def remove_incoming(self, name: str) -> None:
        """Remove what a migration that did not happen left here: an incoming guest still
        paused waiting for its state, or a defined one not running, and its files. A guest
        that runs here is not a leftover (``InvalidState``)."""
        hv = self.agent.hypervisor
        try:
            state = hv.info(name).state
        except GuestNotFound:
            state = "stopped"
        else:
            if state in ("running", "paused") and not hv.incoming(name):
                raise InvalidState(
                    f"guest {name} runs on this host: not a leftover of a migration",
                    guest=name,
                )
        self.agent.undefine(name)
        log.info("removed incoming guest %s (was %s)", name, state)


def _status(
    state: str, p: MigrationProgress | None, max_downtime: int | None, error: str | None
) -> MigrationStatus:
    if p is None:
        return MigrationStatus.model_validate(
            {"state": state, "error": error, "max_downtime_ms": max_downtime}
        )
    return MigrationStatus.model_validate(
        {
            "state": state,
            "error": error,
            "elapsed_ms": p.elapsed_ms,
            "memory_total": p.memory_total,
            "memory_processed": p.memory_processed,
            "memory_remaining": p.memory_remaining,
            "disk_total": p.disk_total,
            "disk_processed": p.disk_processed,
            "disk_remaining": p.disk_remaining,
            "dirty_rate": p.dirty_rate,
            "iteration": p.iteration,
            "max_downtime_ms": max_downtime,
            "downtime_ms": p.downtime_ms,
        }
    )


def _image_info(path: Path) -> dict[str, Any]:
    argv = ["qemu-img", "info", "--output=json", "-U", str(path)]
    info: dict[str, Any] = json.loads(run(argv, COMMAND_TIMEOUT))
    return info


def _file_disks(xml: str) -> dict[str, str]:
    """Target -> file of the domain's file-backed disks."""
    root = ET.fromstring(xml)
    found = {}
    for disk in root.iterfind("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if disk.get("type") == "file" and target is not None and source is not None:
            if source.get("file") and target.get("dev"):
                found[str(target.get("dev"))] = str(source.get("file"))
    return found


def _readonly_disks(xml: str) -> set[str]:
    root = ET.fromstring(xml)
    return {
        str(target.get("dev"))
        for disk in root.iterfind("devices/disk")
        if disk.find("readonly") is not None and (target := disk.find("target")) is not None
    }


def rewrite_paths(
    xml: str,
    disks: dict[str, str],
    kernel: str | None,
    initrd: str | None,
    console_log: str,
) -> str:
    """The source's domain XML with this host's files: each file disk at a target of
    ``disks`` (target -> path), the kernel and initrd, and the serial console's log.
    ``InvalidRequest`` when the XML has a file disk this host has no path for."""
    root = ET.fromstring(xml)
    for disk in root.iterfind("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if disk.get("type") != "file" or target is None or source is None:
            continue
        dev = target.get("dev", "")
        if dev not in disks:
            raise InvalidRequest(f"the guest's disk {dev} has no counterpart on this host")
        source.set("file", disks[dev])
    for tag, path in (("kernel", kernel), ("initrd", initrd)):
        element = root.find(f"os/{tag}")
        if element is not None and path:
            element.text = path
    for device in ("serial", "console"):
        for element in root.iterfind(f"devices/{device}"):
            source = element.find("source")
            if element.get("type") == "file" and source is not None and source.get("path"):
                source.set("path", console_log)
    return ET.tostring(root, encoding="unicode")
