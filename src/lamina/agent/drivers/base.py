"""The hypervisor interface the agent drives, and the records it returns.

A driver is chosen by name from ``HYPERVISORS`` (see ``lamina.agent.drivers``). The
agent is the only caller; the manager reaches a hypervisor through its host's agent.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lamina.errors import NotSupported

GuestState = Literal["running", "paused", "stopped", "crashed", "building", "unknown"]


@dataclass(frozen=True)
class DiskSpec:
    """One disk of a guest: a file on the host."""

    path: str
    target: str  # vda, vdb, ...
    format: Literal["raw", "qcow2"] = "qcow2"
    readonly: bool = False
    serial: str | None = None  # what the guest finds the disk by


@dataclass(frozen=True)
class NetworkDisk:
    """A disk reached over the network by the hypervisor itself: an iSCSI LUN read by
    QEMU's own initiator (no kernel initiator on the host)."""

    iqn: str
    host: str  # the portal's address
    target: str  # vdb, vdc, ...
    port: int = 3260
    lun: int = 1
    format: Literal["raw", "qcow2"] = "raw"
    serial: str | None = None  # what the guest finds the disk by (the volume id)

    @property
    def source(self) -> str:
        """``iscsi://host:port/<iqn>/<lun>``, as ``disks()`` reports it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"iscsi://{host}:{self.port}/{self.iqn}/{self.lun}"


@dataclass(frozen=True)
class NicSpec:
    """One virtio network interface of a guest, on tap ``tap``.

    With ``bridge`` the hypervisor puts the tap into that bridge (the host's own network);
    without, it only makes the tap, and the agent moves it into its namespace's bridge."""

    mac: str
    tap: str
    bridge: str | None = None


@dataclass(frozen=True)
class GuestDisk:
    """A disk a guest has: its device name and where its bytes come from."""

    target: str
    source: str | None  # a file path, an ``iscsi://`` URL (see NetworkDisk), or None


@dataclass(frozen=True)
class GuestTags:
    """Who made a guest, kept in its domain's metadata: the deployment whose manager asked
    for it, the instance it is, and when it was first defined (seconds since the epoch).
    Reconcile touches only guests tagged with its own deployment, and only once they are
    older than its grace period."""

    deployment: str | None = None
    instance: str | None = None
    created: float | None = None


@dataclass(frozen=True)
class GuestSpec:
    """Everything needed to define a guest."""

    name: str
    vcpus: int
    memory_mib: int
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    console_log: str | None = None  # serial console output is appended to this file
    uuid: str | None = None  # None: the hypervisor picks one (or keeps the existing one)
    tags: GuestTags | None = None  # None: an untagged guest


@dataclass(frozen=True)
class GuestInfo:
    name: str
    state: GuestState
    vcpus: int
    memory_mib: int
    uptime_seconds: float | None  # None unless running or paused
    tags: GuestTags = GuestTags()


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    vcpus: int
    memory_mib: int
    cpu_model: str
    #: What a saved guest needs of a host (see ``SavedGuest``); None/empty: not known.
    qemu_version: str | None = None
    machine_types: tuple[str, ...] = ()
    arch: str | None = None


@dataclass(frozen=True)
class SavedGuest:
    """What a guest saved by ``Hypervisor.checkpoint`` needs to be restored: the
    hypervisor and machine that ran it (a restore on a host without them cannot work)."""

    domain_type: str
    vcpus: int
    memory_mib: int
    qemu_version: str | None = None
    machine: str | None = None  # the machine type as run: pc-i440fx-8.2, not pc
    cpu_mode: str | None = None  # host-passthrough, custom, ...
    cpu_model: str | None = None  # the host's model for host-passthrough
    arch: str | None = None
    paused_seconds: float = 0.0


@dataclass(frozen=True)
class MigrationRequest:
    """A guest moved to another host's hypervisor while it runs (``Hypervisor.migrate``).

    ``xml`` is the guest's migratable definition with the destination's paths; the disks at
    ``copy_disks`` (targets) are copied over the destination's NBD server into files it has
    made of the same size, only their top image (a qcow2 overlay's backing must be there
    already); the others (read-only layers, network disks) are the destination's own."""

    dest_uri: str  # the destination's libvirtd: qemu+tls://ADDR/system (qemu+tcp in labs)
    xml: str
    migrate_uri: str | None = None  # where QEMU's stream goes: tcp://ADDR
    copy_disks: tuple[str, ...] = ()
    tls: bool = False  # QEMU's stream (and NBD) over TLS too
    max_downtime_ms: int = 300
    auto_converge: bool = True
    #: Leave the guest paused on the destination (a stopped guest moved: it never ran).
    paused: bool = False


@dataclass(frozen=True)
class MigrationProgress:
    """A guest's migration job as the hypervisor counts it (bytes). ``active`` while one
    runs; ``downtime_ms`` once completed (where the hypervisor reports it)."""

    active: bool
    elapsed_ms: int = 0
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    disk_total: int = 0
    disk_processed: int = 0
    disk_remaining: int = 0
    dirty_rate: int = 0  # pages per second
    iteration: int = 0
    downtime_ms: int | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a hypervisor can do, as data callers check."""

    domain_type: str  # "kvm", "qemu" (TCG software emulation) or "test"
    kvm: bool
    pause: bool = True
    console_log: bool = True
    extra: tuple[str, ...] = field(default_factory=tuple)


class Hypervisor(abc.ABC):
    """A host's hypervisor. Every method raises ``LaminaError`` subclasses on failure:
    ``GuestNotFound`` for an unknown guest, ``InvalidState`` for an action the guest's state
    forbids, ``BackendUnavailable`` when the hypervisor cannot be reached."""

    capabilities: Capabilities

    @abc.abstractmethod
    def host_info(self) -> HostInfo:
        """CPU and memory of the host as the hypervisor sees them."""

    @abc.abstractmethod
    def define(self, spec: GuestSpec) -> None:
        """Define (persistently) a guest; redefining an existing stopped guest replaces it."""

    @abc.abstractmethod
    def start(self, name: str, paused: bool = False) -> None:
        """Boot a defined guest, with its vCPUs paused if ``paused`` (``resume()`` lets it
        run). Starting a running or paused guest is a no-op."""

    @abc.abstractmethod
    def shutdown(self, name: str, timeout: float = 30.0) -> None:
        """Ask the guest to power off; force it off after ``timeout`` seconds."""

    @abc.abstractmethod
    def destroy(self, name: str) -> None:
        """Power the guest off at once. A stopped guest is a no-op."""

    @abc.abstractmethod
    def pause(self, name: str) -> None:
        """Suspend the guest's vCPUs."""

    @abc.abstractmethod
    def resume(self, name: str) -> None:
        """Resume a paused guest."""

    @abc.abstractmethod
    def reboot(self, name: str) -> None:
        """Reset a running guest."""

    @abc.abstractmethod
    def undefine(self, name: str) -> None:
        """Remove the guest's definition (destroying it first). Unknown guests are a no-op."""

    @abc.abstractmethod
    def info(self, name: str) -> GuestInfo:
        """State, size and uptime of one guest."""

    @abc.abstractmethod
    def list(self) -> list[GuestInfo]:
        """Every guest defined on this hypervisor (Lamina's and others')."""

    @abc.abstractmethod
    def attach_disk(self, name: str, disk: NetworkDisk) -> None:
        """Attach ``disk`` to the guest: live and persistently when it runs, persistently
        when it is stopped. The same disk already attached at that target is a no-op.
        Raises ``Conflict`` when the target holds another disk."""

    @abc.abstractmethod
    def detach_disk(self, name: str, target: str, timeout: float = 30.0) -> None:
        """Detach the disk at ``target`` (live and persistently); a missing one is a no-op.
        A running guest must release it (ACPI hot-unplug); raises ``Timeout`` when it has
        not within ``timeout`` seconds: the disk is then gone from the persistent definition
        but still attached live, and detaching again waits again."""

    @abc.abstractmethod
    def disks(self, name: str) -> builtins.list[GuestDisk]:
        """The guest's disks as they are now (live when it runs)."""

    # -- migration (optional: a driver without it raises NotSupported) ---------------------

    def migratable_xml(self, name: str) -> str:
        """The running guest's definition as another host of the same hypervisor accepts it
        (``VIR_DOMAIN_XML_MIGRATABLE``)."""
        raise NotSupported(f"{type(self).__name__} cannot migrate guests")

    def migrate(self, name: str, request: MigrationRequest) -> None:
        """Move the running (or paused) guest to ``request.dest_uri``; blocks until it runs
        there (the source's definition is then removed) or the migration failed or was
        aborted (the guest still runs here). Raises on failure."""
        raise NotSupported(f"{type(self).__name__} cannot migrate guests")

    def migration_progress(self, name: str, completed: bool = False) -> MigrationProgress:
        """The guest's migration job now, or (``completed``) the last one that finished."""
        raise NotSupported(f"{type(self).__name__} cannot migrate guests")

    def set_migration_downtime(self, name: str, milliseconds: int) -> None:
        """Allow the running migration's final pause this long."""
        raise NotSupported(f"{type(self).__name__} cannot migrate guests")

    def abort_migration(self, name: str) -> None:
        """Abort the guest's running migration (it stays here); none running is a no-op."""
        raise NotSupported(f"{type(self).__name__} cannot migrate guests")

    def incoming(self, name: str) -> bool:
        """Whether the guest is a migration's incoming half: paused, waiting for its state."""
        return False

    def checkpoint(self, name: str, memory: Path, while_paused: Callable[[], None]) -> SavedGuest:
        """Save the running or paused guest's memory into the file ``memory`` and call
        ``while_paused`` (which copies its disks) with its vCPUs paused, so memory and disks
        agree; then it goes on as it was (running again, or still paused). Raises
        ``InvalidState`` unless it runs or is paused, ``NotSupported`` if the driver cannot.
        """
        raise NotSupported(f"{type(self).__name__} cannot checkpoint guests")

    def restore(self, spec: GuestSpec, memory: Path, paused: bool = False) -> None:
        """Replace the guest ``spec.name`` (destroyed first if it runs) by the one saved in
        ``memory`` by ``checkpoint``, with the disk files, kernel, initrd and console log of
        ``spec`` (this host's paths, disks by target), defined persistently as ``spec``.
        It runs (paused if ``paused``) from where it was saved."""
        raise NotSupported(f"{type(self).__name__} cannot restore guests")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""
