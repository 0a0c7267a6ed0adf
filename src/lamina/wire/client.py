"""The manager's client for one agent: JSON over mutual TLS."""

from __future__ import annotations

import ssl
import time
from typing import Any, BinaryIO, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from lamina.errors import BackendUnavailable
from lamina.remote_errors import raise_for_error
from lamina.wire import protocol as wire

T = TypeVar("T")
CONNECT_RETRIES = (0.5, 1.0, 2.0, 2.0, 2.0)


class AgentClient:
    def __init__(
        self,
        address: str,
        tls: ssl.SSLContext,
        timeout: float = 30.0,
        deployment: str | None = None,
    ) -> None:
        self.address = address
        #: Named on every call: the agent tags what it makes with it.
        headers = {wire.DEPLOYMENT_HEADER: deployment} if deployment else {}
        self._http = httpx.Client(
            base_url=f"https://{address}", verify=tls, timeout=timeout, headers=headers
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, out: type[T], retry: bool = True, **kwargs: Any) -> T:
        """Send a request and read the answer as ``out``."""
        response = self._send(method, path, retry, **kwargs)
        raise_for_error(response)
        return TypeAdapter(out).validate_python(response.json())

    def _do(self, method: str, path: str, **kwargs: Any) -> None:
        """Send a request whose answer carries nothing."""
        raise_for_error(self._send(method, path, True, **kwargs))

    def _send(self, method: str, path: str, retry: bool, **kwargs: Any) -> httpx.Response:
        # A refused connection never reached the agent, so any request may be retried: this
        # rides out an agent restart. Other failures are reported at once.
        for delay in (*CONNECT_RETRIES, None):
            try:
                return self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                if _certificate_refused(exc):
                    # Waiting does not change a certificate: report it at once.
                    raise BackendUnavailable(
                        f"agent at {self.address} failed certificate verification: {exc}"
                    ) from None
                if delay is None or not retry:
                    raise BackendUnavailable(
                        f"agent at {self.address} cannot be reached: {exc}"
                    ) from None
                time.sleep(delay)
            except httpx.HTTPError as exc:
                raise BackendUnavailable(
                    f"agent at {self.address} failed: {exc or type(exc).__name__}"
                ) from None
        raise AssertionError("unreachable")

    def status(self) -> wire.HostStatus:
        return self._call("GET", "/status", wire.HostStatus)

    def heartbeat(self) -> wire.HostStatus:
        """Status without retries: a silent agent must be noticed, not waited for."""
        return self._call("GET", "/status", wire.HostStatus, retry=False)

    def info(self) -> wire.ServerInfo:
        return self._call("GET", "/info", wire.ServerInfo)

    def downloads(self) -> wire.DownloadStatus:
        return self._call("GET", "/downloads", wire.DownloadStatus)

    def disk_usage(self) -> wire.DiskUsage:
        return self._call("GET", "/disk", wire.DiskUsage)

    def cache_install(
        self, source: str, sha256: str | None = None, capability: str | None = None
    ) -> wire.CacheEntry:
        """Have the host cache ``source`` (a ``blob:<sha256>`` of the manager's repository
        with its ``capability``, a host path or a URL); answers the entry."""
        body = wire.CacheInstall(source=source, sha256=sha256, capability=capability)
        return self._call("POST", "/cache", wire.CacheEntry, json=_dump(body), timeout=3600)

    def cache_list(self) -> list[wire.CacheEntry]:
        return self._call("GET", "/cache", list[wire.CacheEntry])

    def cache_check(self, digest: str) -> wire.CacheEntry:
        return self._call("GET", f"/cache/{digest}", wire.CacheEntry)

    def cache_read(self, digest: str, out: BinaryIO) -> int:
        """Stream a cached file into ``out``; answer its size."""
        done = 0
        try:
            with self._http.stream("GET", f"/cache/{digest}/data", timeout=3600) as response:
                if response.status_code != 200:
                    response.read()
                    raise_for_error(response)
                for chunk in response.iter_bytes(1024 * 1024):
                    out.write(chunk)
                    done += len(chunk)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"agent at {self.address} failed: {exc}") from None
        return done

    def cache_remove(self, digest: str) -> None:
        self._do("DELETE", f"/cache/{digest}")

    def disk_create(self, req: wire.DiskCreate) -> wire.DiskInfo:
        return self._call("POST", "/disks", wire.DiskInfo, json=_dump(req), timeout=600)

    def disk_remove(self, guest: str, name: str) -> None:
        self._do("DELETE", f"/disks/{guest}/{name}")

    def guests(self) -> list[wire.GuestStatus]:
        return self._call("GET", "/guests", list[wire.GuestStatus])

    def guest(self, name: str) -> wire.GuestStatus:
        return self._call("GET", f"/guests/{name}", wire.GuestStatus)

    def define(self, name: str, spec: wire.GuestDefinition) -> wire.GuestStatus:
        return self._call("PUT", f"/guests/{name}", wire.GuestStatus, json=_dump(spec))

    def act(self, name: str, action: str) -> wire.GuestStatus:
        return self._call("POST", f"/guests/{name}/{action}", wire.GuestStatus, timeout=120)

    def capture(self, name: str, req: wire.GuestCapture) -> wire.CacheEntry:
        return self._call(
            "POST", f"/guests/{name}/capture", wire.CacheEntry, json=_dump(req), timeout=1800
        )

    def checkpoint(self, name: str, req: wire.GuestCheckpoint) -> wire.CheckpointFiles:
        """Save the guest's memory and disks together into the host's cache (it goes on as
        it was); ``InvalidState`` unless it runs or is paused."""
        return self._call(
            "POST", f"/guests/{name}/checkpoint", wire.CheckpointFiles, json=_dump(req),
            timeout=600,
        )  # fmt: skip

    def restore(self, name: str, req: wire.GuestRestore) -> wire.GuestStatus:
        """Replace the guest by the saved one whose files are in the host's cache."""
        return self._call(
            "POST", f"/guests/{name}/restore", wire.GuestStatus, json=_dump(req), timeout=600
        )

    def undefine(self, name: str) -> None:
        self._do("DELETE", f"/guests/{name}", timeout=120)

    def console(self, name: str, offset: int = 0) -> wire.ConsoleChunk:
        return self._call(
            "GET", f"/guests/{name}/console", wire.ConsoleChunk, params={"offset": offset}
        )

    # -- live migration (docs/migration.md) ----------------------------------------------

    def migration_source(self, name: str, cold: bool = False) -> wire.MigrationSource:
        """The running guest's migratable definition and own disks (on its source); with
        ``cold`` a stopped guest is started paused first."""
        return self._call(
            "GET", f"/guests/{name}/migration/source", wire.MigrationSource,
            params={"cold": "true" if cold else "false"}, timeout=120,
        )  # fmt: skip

    def migration_forget(self, name: str, keep_disks: bool = False) -> None:
        """On the source once the guest left: its definition and (unless ``keep_disks``)
        files go; ``InvalidState`` while it still runs there."""
        self._do(
            "DELETE", f"/guests/{name}/migration/source",
            params={"keep_disks": "true" if keep_disks else "false"}, timeout=120,
        )  # fmt: skip

    def migration_start(self, name: str, req: wire.MigrationStart) -> wire.MigrationStatus:
        """Start moving the guest (idempotent while one runs); answers at once."""
        return self._call(
            "POST", f"/guests/{name}/migration", wire.MigrationStatus, json=_dump(req)
        )

    def migration_status(self, name: str) -> wire.MigrationStatus:
        return self._call("GET", f"/guests/{name}/migration", wire.MigrationStatus)

    def migration_tune(self, name: str, max_downtime_ms: int) -> wire.MigrationStatus:
        body = wire.MigrationTune(max_downtime_ms=max_downtime_ms)
        return self._call(
            "PATCH", f"/guests/{name}/migration", wire.MigrationStatus, json=_dump(body)
        )

    def migration_abort(self, name: str) -> None:
        """Abort the guest's migration (it stays on the source); idempotent."""
        self._do("DELETE", f"/guests/{name}/migration", timeout=60)

    def incoming_prepare(self, name: str, req: wire.IncomingPrepare) -> wire.IncomingPrepared:
        """On the destination: empty disks of the right sizes, and the definition with its
        paths."""
        return self._call(
            "PUT", f"/guests/{name}/incoming", wire.IncomingPrepared, json=_dump(req),
            timeout=600,
        )  # fmt: skip

    def incoming_status(self, name: str) -> str:
        """``incoming`` or ``arrived`` (see ``IncomingStatus``); ``GuestNotFound`` if the
        guest is not on the host."""
        return self._call("GET", f"/guests/{name}/incoming", wire.IncomingStatus).presence

    def incoming_finish(self, name: str) -> wire.MigrationStatus:
        """On the destination once the guest arrived: taps plugged, figures answered."""
        return self._call("POST", f"/guests/{name}/incoming/finish", wire.MigrationStatus)

    def incoming_remove(self, name: str) -> None:
        """On the destination: remove a migration's leftover (``InvalidState`` if the guest
        runs there)."""
        self._do("DELETE", f"/guests/{name}/incoming", timeout=120)

    # -- volumes (the volume server role) ---------------------------------------------

    def volume_create(self, req: wire.VolumeCreate) -> wire.VolumeInfo:
        """Create a volume, empty or from a snapshot (a copy may be long: see
        ``downloads()`` for its progress, source ``volume:<id>``)."""
        return self._call("POST", "/volumes", wire.VolumeInfo, json=_dump(req), timeout=3600)

    def volume_delete(self, volume: str) -> None:
        """Idempotent; ``InvalidState`` while the volume is exported."""
        self._do("DELETE", f"/volumes/{volume}", timeout=600)

    def volume_extend(self, volume: str, req: wire.VolumeExtend) -> wire.VolumeInfo:
        return self._call(
            "POST", f"/volumes/{volume}/extend", wire.VolumeInfo, json=_dump(req), timeout=600
        )

    def volume_list(self) -> list[wire.VolumeInfo]:
        return self._call("GET", "/volumes", list[wire.VolumeInfo], timeout=120)

    def snapshot_create(self, volume: str, req: wire.SnapshotCreate) -> wire.SnapshotInfo:
        """Snapshot a volume (progress in ``downloads()``, source ``snapshot:<id>``)."""
        return self._call(
            "POST", f"/volumes/{volume}/snapshots", wire.SnapshotInfo, json=_dump(req),
            timeout=3600,
        )  # fmt: skip

    def snapshot_delete(self, snapshot: str) -> None:
        """Idempotent; ``InvalidState`` while a copy-on-write clone depends on it."""
        self._do("DELETE", f"/snapshots/{snapshot}", timeout=600)

    def snapshot_list(self) -> list[wire.SnapshotInfo]:
        return self._call("GET", "/snapshots", list[wire.SnapshotInfo], timeout=120)

    def volume_export(self, volume: str, req: wire.VolumeExport) -> wire.ExportInfo:
        """Idempotent for the same address; ``InvalidState`` for another one."""
        return self._call("PUT", f"/volumes/{volume}/export", wire.ExportInfo, json=_dump(req))

    def volume_allow(self, volume: str, initiator_address: str) -> wire.ExportInfo:
        """Let another host's initiator log in to the export too (an instance moving
        there); idempotent; ``NotFound`` when the volume is not exported."""
        return self._call(
            "PUT", f"/volumes/{volume}/export/initiators/{initiator_address}", wire.ExportInfo
        )

    def volume_disallow(self, volume: str, initiator_address: str) -> wire.ExportInfo:
        """Let a host's initiator go (the instance moved away); idempotent."""
        return self._call(
            "DELETE", f"/volumes/{volume}/export/initiators/{initiator_address}", wire.ExportInfo
        )

    def volume_unexport(self, volume: str) -> None:
        """Idempotent."""
        self._do("DELETE", f"/volumes/{volume}/export")

    def export_list(self) -> list[wire.ExportInfo]:
        return self._call("GET", "/exports", list[wire.ExportInfo])

    # -- guest disks (the instance's host) ----------------------------------------------

    def guest_attach_disk(self, name: str, target: str, req: wire.DiskAttach) -> None:
        """Attach an iSCSI disk at ``target`` (vdb..vdz), live when the guest runs;
        idempotent if that disk is already there, ``Conflict`` if another one is."""
        self._do("PUT", f"/guests/{name}/disks/{target}", json=_dump(req), timeout=120)

    def guest_detach_disk(self, name: str, target: str) -> None:
        """Idempotent; ``Timeout`` (504) when a running guest does not release the disk."""
        self._do("DELETE", f"/guests/{name}/disks/{target}", timeout=120)

    def guest_disks(self, name: str) -> list[wire.GuestDiskInfo]:
        return self._call("GET", f"/guests/{name}/disks", list[wire.GuestDiskInfo])

    # -- networks (the host's bridges, dnsmasq, relays) and port forwards ----------------

    def network_state(self, state: wire.NetworkState) -> list[wire.NetworkInfo]:
        """Make the host have exactly ``state``'s networks (idempotent); answer them.
        ``InvalidRequest`` for a bad state (nothing changed); ``network_failed`` (500)
        naming each network that did not come up (the rest did; pushing again retries)."""
        return self._call("PUT", "/network", list[wire.NetworkInfo], json=_dump(state), timeout=120)

    def networks(self) -> list[wire.NetworkInfo]:
        """The host's networks as they are now (``dnsmasq_pid`` None if it is not running)."""
        return self._call("GET", "/network", list[wire.NetworkInfo])

    def forward_create(self, forward: str, spec: wire.PortForward) -> wire.ForwardInfo:
        """Create or replace a port forward (the same request again is a no-op); answers
        the real ``host_port``. ``Conflict`` when the address and port are in use,
        ``InvalidRequest`` when its network is not on the host."""
        return self._call("PUT", f"/forwards/{forward}", wire.ForwardInfo, json=_dump(spec))

    def forward_delete(self, forward: str) -> None:
        """Idempotent; cuts the forward's connections."""
        self._do("DELETE", f"/forwards/{forward}")

    def forwards(self) -> list[wire.ForwardInfo]:
        return self._call("GET", "/forwards", list[wire.ForwardInfo])


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a connection failed because the agent's certificate was refused."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
