"""The host agent (STORM's stormd): answers the manager over mutual TLS.

It owns the host's image cache and guest disks and drives the local hypervisor. It trusts
only clients with a certificate from the manager's CA (enforced by the TLS layer).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.middleware.base import RequestResponseEndpoint

from lamina import __version__
from lamina.agent.cache import DownloadTracker, FetchConfig, ImageCache
from lamina.agent.capture import capture_layer
from lamina.agent.checkpoints import restore_spec, save_guest, write_disks
from lamina.agent.disks import DiskStore
from lamina.agent.drivers.base import (
    DiskSpec,
    GuestInfo,
    GuestSpec,
    GuestTags,
    Hypervisor,
    NetworkDisk,
)
from lamina.agent.forwards import ForwardTable
from lamina.agent.guest_nics import NICS, nic_specs, read_nics, taps, write_nics
from lamina.agent.identity import DeploymentIdentity
from lamina.agent.migration import Migrations
from lamina.agent.migration_tls import migration_uri, pki_dir
from lamina.agent.networks import NetworkConfig, NetworkHost
from lamina.agent.volumes import VolumeBackend, VolumeConfig, VolumeServer
from lamina.errors import GuestNotFound, InvalidRequest, InvalidState, LaminaError
from lamina.httperrors import install_error_handlers
from lamina.wire.protocol import (
    DEPLOYMENT_HEADER,
    DISK_TARGET,
    PROCEDURES,
    CacheEntry,
    CacheInstall,
    CheckpointFiles,
    ConsoleChunk,
    DiskAttach,
    DiskCreate,
    DiskInfo,
    DiskUsage,
    DownloadStatus,
    ExportInfo,
    ForwardInfo,
    GuestCapture,
    GuestCheckpoint,
    GuestDefinition,
    GuestDiskInfo,
    GuestNic,
    GuestRestore,
    GuestStatus,
    HostStatus,
    IncomingPrepare,
    IncomingPrepared,
    IncomingStatus,
    MigrationSource,
    MigrationStart,
    MigrationStatus,
    MigrationTune,
    NetworkInfo,
    NetworkState,
    PortForward,
    ServerInfo,
    SnapshotCreate,
    SnapshotInfo,
    VolumeCreate,
    VolumeExport,
    VolumeExtend,
    VolumeInfo,
)

log = logging.getLogger(__name__)

CONSOLE_CHUNK = 256 * 1024
#: How long a detach waits for a running guest to release the disk (ACPI hot-unplug).
DETACH_TIMEOUT = 30.0
Action = Literal["start", "stop", "destroy", "pause", "resume", "reboot"]


class Agent:
    """The agent's state: its hypervisor, cache, disks, networks and port forwards.

    Building one changes nothing on the host; ``restore()`` (at the agent's start) brings
    back the networks and forwards it had, ``close()`` stops its listeners."""

    def __init__(
        self,
        root: Path,
        hypervisor: Hypervisor,
        volumes: VolumeConfig | None = None,
        network: NetworkConfig | None = None,
        fetch: FetchConfig | None = None,
    ) -> None:
        self.root = root
        self.hypervisor = hypervisor
        #: The deployment whose manager this agent serves; what it makes is tagged with it.
        self.identity = DeploymentIdentity(root)
        self.tracker = DownloadTracker()
        self.cache = ImageCache(root / "cache", self.tracker, fetch)
        self.disks = DiskStore(root / "guests")
        #: The volume routes' backend (tests put a fake here before building the app).
        self.volumes: VolumeBackend = VolumeServer(
            volumes or VolumeConfig(), root, self.tracker, lambda: self.identity.id
        )
        self.network = NetworkHost(
            root / "networks", network or NetworkConfig(), root / "tls", lambda: self.identity.id
        )
        self.forwards = ForwardTable(
            root / "forwards.json", self.network.namespace, self.network.networks
        )
        self.started = time.monotonic()
        self.migrations = Migrations(self)

    def restore(self) -> None:
        """At the agent's start: the stored networks and forwards again, and running
        guests' taps into their bridges. Failures are logged, never raised."""
        self.network.restore()
        self.forwards.restore()
        self.plug_guests()

    def close(self) -> None:
        """Stop the relays and forwards' listeners (dnsmasq and guests keep running)."""
        self.forwards.close()
        self.network.close()

    def info(self) -> ServerInfo:
        host = self.hypervisor.host_info()
        caps = self.hypervisor.capabilities
        return ServerInfo(
            version=__version__,
            hostname=socket.gethostname(),
            uptime_seconds=round(time.monotonic() - self.started, 1),
            capabilities=list(PROCEDURES),
            domain_type=caps.domain_type,
            kvm=caps.kvm,
            vcpus=host.vcpus,
            memory_mib=host.memory_mib,
            migration_uri=migration_uri(pki_dir(self.root)),
            qemu_version=host.qemu_version,
            machine_types=list(host.machine_types),
            cpu_model=host.cpu_model,
            arch=host.arch,
            tunnel_address=self.network.tunnel_address or None,
        )

    def disk_usage(self) -> DiskUsage:
        usage = shutil.disk_usage(self.root)
        used = self.disks.used_bytes() + sum(e.size for e in self.cache.entries())
        return DiskUsage(
            used_bytes=used,
            free_bytes=usage.free,
            total_bytes=usage.total,
            volume_free_bytes=self.volumes.free_bytes(),
        )

    def define(self, name: str, spec: GuestDefinition) -> GuestStatus:
        guest_dir = self.disks.guest_dir(name)
        guest_dir.mkdir(parents=True, exist_ok=True)
        disks = self.disk_specs(name, spec)
        nics = nic_specs(spec.nics, self.network.networks(), self.network.namespace)
        self.hypervisor.define(
            GuestSpec(
                name=name,
                vcpus=spec.vcpus,
                memory_mib=spec.memory_mib,
                kernel=str(self.cache.check(spec.kernel).path) if spec.kernel else None,
                initrd=str(self.cache.check(spec.initrd).path) if spec.initrd else None,
                cmdline=spec.cmdline,
                disks=tuple(disks),
                nics=nics,
                console_log=str(guest_dir / "console.log"),
                tags=GuestTags(
                    deployment=self.identity.id,
                    instance=name.removeprefix("lamina-") if name.startswith("lamina-") else None,
                    created=time.time(),
                ),
            )
        )
        write_nics(guest_dir, spec.nics)
        return _status(self.hypervisor.info(name))

    def disk_specs(self, name: str, spec: GuestDefinition) -> list[DiskSpec]:
        """The hypervisor's disks of a guest defined as ``spec`` on this host: cached
        layers, and disks made with ``disk_create`` (``InvalidRequest`` if one is not)."""
        disks = []
        for i, disk in enumerate(spec.disks):
            target = f"vd{chr(ord('a') + i)}"
            if disk.layer:
                # A cached layer, shared read-only by every guest of this host that uses it.
                path = Path(self.cache.check(disk.layer).path)
                disks.append(DiskSpec(str(path), target, "raw", True, disk.serial))
                continue
            path = self.disks.disk_path(name, disk.name)
            if not path.is_file():
                raise InvalidRequest(f"disk {disk.name!r} of {name!r} has not been created")
            disks.append(DiskSpec(str(path), target, disk.format, disk.readonly, disk.serial))
        return disks

    def nics(self, name: str) -> list[GuestNic]:
        """The NICs the guest was defined with."""
        return read_nics(self.disks.guest_dir(name))

    def _plug(self, nics: list[GuestNic]) -> None:
        # libvirt's test driver makes no taps.
        test = self.hypervisor.capabilities.domain_type == "test"
        self.network.plug(taps(nics), missing_ok=test)

    def plug_guests(self) -> None:
        """Put every running guest's taps into their bridges (after the agent's start, or
        after a network's bridge was made again); failures are logged."""
        for folder in sorted(self.disks.root.glob(f"*/{NICS}")):
            name = folder.parent.name
            try:
                if self.hypervisor.info(name).state in ("running", "paused"):
                    self._plug(self.nics(name))
            except LaminaError as exc:
                log.warning("taps of guest %s: %s", name, exc.message)

    def apply_network(self, state: NetworkState) -> list[NetworkInfo]:
        """Converge the host's networks to ``state`` (see ``NetworkHost.apply``), then put
        running guests' taps back into bridges made again."""
        try:
            return self.network.apply(state)
        finally:
            self.plug_guests()

    def act(self, name: str, action: Action) -> GuestStatus:
        hv = self.hypervisor
        if action == "start":
            # A fresh boot gets a fresh console log, so "first line" means this boot's.
            log_path = self.disks.guest_dir(name) / "console.log"
            stopped = hv.info(name).state == "stopped"
            nics = self.nics(name)
            networks = self.network.networks()
            missing = sorted({n.network for n in nics if n.network not in networks})
            if stopped and missing:
                raise InvalidRequest(
                    f"guest {name} has NICs on networks not on this host: {', '.join(missing)}",
                    networks=missing,
                )
            if stopped and log_path.exists():
                log_path.rename(log_path.with_suffix(".log.0"))
            if stopped and self.network.namespace and nics:
                # Its taps appear in the host's network: the guest may only run once they
                # are in the namespace's bridges.
                hv.start(name, paused=True)
                try:
                    self._plug(nics)
                    hv.resume(name)
                except BaseException:
                    with contextlib.suppress(Exception):
                        hv.destroy(name)
                    raise
            else:
                hv.start(name)
                if nics:
                    self._plug(nics)
        elif action == "stop":
            hv.shutdown(name, timeout=10)
        else:
            getattr(hv, action)(name)
        return _status(hv.info(name))

    def capture(self, name: str, req: GuestCapture) -> CacheEntry:
        state = self.hypervisor.info(name).state
        if state != "stopped":
            raise InvalidState(f"guest {name} is {state}: stop it before capturing its layer")
        disk = self.disks.disk_path(name, req.disk)
        return capture_layer(disk, req.exclude, req.format, self.cache)

    def checkpoint(self, name: str, req: GuestCheckpoint) -> CheckpointFiles:
        """Save the guest's memory and disks together into the cache (``save_guest``)."""
        return save_guest(self.hypervisor, self.disks, self.cache, name, req)

    def restore_guest(self, name: str, req: GuestRestore) -> GuestStatus:
        """Replace the guest by the one saved in the cached ``req.memory``: whatever runs
        now is stopped, its disks written from the cached copies, the saved guest restored
        with this host's paths, its taps put into their bridges, then let run."""
        hv = self.hypervisor
        memory = Path(self.cache.check(req.memory).path)
        for digest in req.disks.values():
            self.cache.check(digest)  # NotFound before anything is touched
        with contextlib.suppress(GuestNotFound):
            hv.destroy(name)
        write_disks(self.disks, self.cache, name, req.disks)
        nics = nic_specs(req.definition.nics, self.network.networks(), self.network.namespace)
        spec = restore_spec(name, req.definition, self.disks, self.cache, nics, self.identity.id)
        # Its taps appear when it is restored: it runs once they are in their bridges.
        hv.restore(spec, memory, paused=True)
        write_nics(self.disks.guest_dir(name), req.definition.nics)
        try:
            if req.definition.nics:
                self._plug(req.definition.nics)
            if not req.paused:
                hv.resume(name)
        except BaseException:
            with contextlib.suppress(Exception):
                hv.destroy(name)
            raise
        return _status(hv.info(name))

    def undefine(self, name: str) -> None:
        self.hypervisor.undefine(name)
        self.disks.remove_guest(name)

    def attach_disk(self, name: str, target: str, req: DiskAttach) -> None:
        _check_target(target)
        host, port = _portal(req.portal)
        disk = NetworkDisk(
            iqn=req.iqn,
            host=host,
            port=port,
            lun=req.lun,
            target=target,
            format=req.format,
            serial=req.serial,
        )
        self.hypervisor.attach_disk(name, disk)

    def detach_disk(self, name: str, target: str) -> None:
        _check_target(target)
        self.hypervisor.detach_disk(name, target, timeout=DETACH_TIMEOUT)

    def guest_disks(self, name: str) -> list[GuestDiskInfo]:
        return [
            GuestDiskInfo(target=d.target, source=d.source) for d in self.hypervisor.disks(name)
        ]

    def console(self, name: str, offset: int) -> ConsoleChunk:
        self.hypervisor.info(name)  # 404 for an unknown guest
        path = self.disks.guest_dir(name) / "console.log"
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(CONSOLE_CHUNK)
        except FileNotFoundError:
            data = b""
        return ConsoleChunk(data=data.decode("utf-8", "replace"), offset=offset + len(data))


def _status(info: GuestInfo) -> GuestStatus:
    return GuestStatus(
        name=info.name,
        state=info.state,
        vcpus=info.vcpus,
        memory_mib=info.memory_mib,
        uptime_seconds=info.uptime_seconds,
        deployment=info.tags.deployment,
        created_at=info.tags.created,
    )


def _check_target(target: str) -> None:
    if not re.fullmatch(DISK_TARGET, target):
        raise InvalidRequest(f"disk target {target!r} is not vdb..vdz", target=target)


def _portal(portal: str) -> tuple[str, int]:
    """(host, port) of ``host:port``, ``[v6]:port`` or a bare address (port 3260)."""
    match = re.fullmatch(
        r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([A-Za-z0-9.-]+)(?::(\d{1,5}))?", portal
    )
    if not match:
        raise InvalidRequest(f"portal {portal!r} is not host:port", portal=portal)
    host = match[1] or match[3]
    port = int(match[2] or match[4] or 3260)
    if not 0 < port < 65536:
        raise InvalidRequest(f"portal {portal!r} has a bad port", portal=portal)
    return host, port


def create_agent_app(agent: Agent) -> FastAPI:
    app = FastAPI(title="Lamina agent", version=__version__)
    install_error_handlers(app)

    @app.middleware("http")
    async def deployment(request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Learn the deployment from the manager's first call; refuse another's."""
        named = request.headers.get(DEPLOYMENT_HEADER)
        if named:
            try:
                agent.identity.learn(named)
            except LaminaError as exc:
                return JSONResponse(exc.to_dict(), status_code=exc.status)
        return await call_next(request)

    @app.get("/info")
    def server_info() -> ServerInfo:
        return agent.info()

    @app.get("/status")
    def status() -> HostStatus:
        return HostStatus(
            info=agent.info(),
            disk=agent.disk_usage(),
            downloads=agent.tracker.status(),
            guests=[_status(g) for g in agent.hypervisor.list()],
        )

    @app.get("/disk")
    def diskspace() -> DiskUsage:
        return agent.disk_usage()

    @app.get("/downloads")
    def downloads() -> DownloadStatus:
        return agent.tracker.status()

    @app.get("/cache")
    def cache_list() -> list[CacheEntry]:
        return agent.cache.entries()

    @app.get("/cache/{digest}")
    def cache_check(digest: str) -> CacheEntry:
        return agent.cache.check(digest)

    @app.post("/cache")
    def cache_install(req: CacheInstall) -> CacheEntry:
        return agent.cache.install(req.source, req.sha256, req.capability)

    @app.get("/cache/{digest}/data")
    def cache_read(digest: str) -> FileResponse:
        return FileResponse(agent.cache.check(digest).path, media_type="application/octet-stream")

    @app.delete("/cache/{digest}", status_code=204)
    def cache_remove(digest: str) -> None:
        agent.cache.remove(digest)

    @app.post("/disks")
    def disk_create(req: DiskCreate) -> DiskInfo:
        backing = agent.cache.check(req.backing).path if req.backing else None
        return agent.disks.create(req, Path(backing) if backing else None)

    @app.delete("/disks/{guest}/{name}", status_code=204)
    def disk_remove(guest: str, name: str) -> None:
        agent.disks.remove(guest, name)

    @app.get("/guests")
    def guests() -> list[GuestStatus]:
        return [_status(g) for g in agent.hypervisor.list()]

    @app.get("/guests/{name}/migration/source")
    def migration_source(name: str, cold: bool = False) -> MigrationSource:
        return agent.migrations.source(name, cold)

    @app.delete("/guests/{name}/migration/source", status_code=204)
    def migration_forget(name: str, keep_disks: bool = False) -> None:
        agent.migrations.forget(name, keep_disks)

    @app.post("/guests/{name}/migration")
    def migration_start(name: str, req: MigrationStart) -> MigrationStatus:
        return agent.migrations.start(name, req)

    @app.get("/guests/{name}/migration")
    def migration_status(name: str) -> MigrationStatus:
        return agent.migrations.status(name)

    @app.patch("/guests/{name}/migration")
    def migration_tune(name: str, req: MigrationTune) -> MigrationStatus:
        return agent.migrations.tune(name, req.max_downtime_ms)

    @app.delete("/guests/{name}/migration", status_code=204)
    def migration_abort(name: str) -> None:
        agent.migrations.abort(name)

    @app.put("/guests/{name}/incoming")
    def incoming_prepare(name: str, req: IncomingPrepare) -> IncomingPrepared:
        return agent.migrations.prepare(name, req)

    @app.get("/guests/{name}/incoming")
    def incoming_status(name: str) -> IncomingStatus:
        return agent.migrations.presence(name)

    @app.post("/guests/{name}/incoming/finish")
    def incoming_finish(name: str) -> MigrationStatus:
        return agent.migrations.finish(name)

    @app.delete("/guests/{name}/incoming", status_code=204)
    def incoming_remove(name: str) -> None:
        agent.migrations.remove_incoming(name)

    @app.get("/guests/{name}/console")
    def guest_console(name: str, offset: int = Query(0, ge=0)) -> ConsoleChunk:
        return agent.console(name, offset)

    @app.get("/guests/{name}/disks")
    def guest_disks(name: str) -> list[GuestDiskInfo]:
        return agent.guest_disks(name)

    @app.put("/guests/{name}/disks/{target}", status_code=204)
    def guest_attach_disk(name: str, target: str, req: DiskAttach) -> None:
        agent.attach_disk(name, target, req)

    @app.delete("/guests/{name}/disks/{target}", status_code=204)
    def guest_detach_disk(name: str, target: str) -> None:
        agent.detach_disk(name, target)

    @app.get("/guests/{name}")
    def guest(name: str) -> GuestStatus:
        return _status(agent.hypervisor.info(name))

    @app.put("/guests/{name}")
    def guest_define(name: str, spec: GuestDefinition) -> GuestStatus:
        return agent.define(name, spec)

    @app.post("/guests/{name}/capture")
    def guest_capture(name: str, req: GuestCapture) -> CacheEntry:
        return agent.capture(name, req)

    @app.post("/guests/{name}/checkpoint")
    def guest_checkpoint(name: str, req: GuestCheckpoint) -> CheckpointFiles:
        return agent.checkpoint(name, req)

    @app.post("/guests/{name}/restore")
    def guest_restore(name: str, req: GuestRestore) -> GuestStatus:
        return agent.restore_guest(name, req)

    @app.post("/guests/{name}/{action}")
    def guest_action(name: str, action: Action) -> GuestStatus:
        return agent.act(name, action)

    @app.delete("/guests/{name}", status_code=204)
    def guest_undefine(name: str) -> None:
        agent.undefine(name)

    @app.put("/network")
    def network_state(state: NetworkState) -> list[NetworkInfo]:
        return agent.apply_network(state)

    @app.get("/network")
    def network_list() -> list[NetworkInfo]:
        return agent.network.list()

    @app.put("/forwards/{forward}")
    def forward_create(forward: str, spec: PortForward) -> ForwardInfo:
        return agent.forwards.put(forward, spec)

    @app.delete("/forwards/{forward}", status_code=204)
    def forward_delete(forward: str) -> None:
        agent.forwards.delete(forward)

    @app.get("/forwards")
    def forward_list() -> list[ForwardInfo]:
        return agent.forwards.list()

    volumes = agent.volumes

    @app.post("/volumes")
    def volume_create(req: VolumeCreate) -> VolumeInfo:
        return volumes.create(req)

    @app.get("/volumes")
    def volume_list() -> list[VolumeInfo]:
        return volumes.volumes()

    @app.delete("/volumes/{volume}", status_code=204)
    def volume_delete(volume: str) -> None:
        volumes.delete(volume)

    @app.post("/volumes/{volume}/extend")
    def volume_extend(volume: str, req: VolumeExtend) -> VolumeInfo:
        return volumes.extend(volume, req)

    @app.post("/volumes/{volume}/snapshots")
    def snapshot_create(volume: str, req: SnapshotCreate) -> SnapshotInfo:
        return volumes.snapshot(volume, req)

    @app.get("/snapshots")
    def snapshot_list() -> list[SnapshotInfo]:
        return volumes.snapshots()

    @app.delete("/snapshots/{snapshot}", status_code=204)
    def snapshot_delete(snapshot: str) -> None:
        volumes.delete_snapshot(snapshot)

    @app.put("/volumes/{volume}/export")
    def volume_export(volume: str, req: VolumeExport) -> ExportInfo:
        return volumes.export(volume, req.initiator_address)

    @app.put("/volumes/{volume}/export/initiators/{address}")
    def volume_allow(volume: str, address: str) -> ExportInfo:
        return volumes.allow(volume, address)

    @app.delete("/volumes/{volume}/export/initiators/{address}")
    def volume_disallow(volume: str, address: str) -> ExportInfo:
        return volumes.disallow(volume, address)

    @app.delete("/volumes/{volume}/export", status_code=204)
    def volume_unexport(volume: str) -> None:
        volumes.unexport(volume)

    @app.get("/exports")
    def export_list() -> list[ExportInfo]:
        return volumes.exports()

    return app
