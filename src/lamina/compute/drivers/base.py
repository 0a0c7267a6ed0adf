"""The hypervisor interface the agent drives, and the records it returns.

A driver is chosen by name from ``HYPERVISORS`` (see ``lamina.compute.drivers``). The
agent is the only caller; the manager reaches a hypervisor through its host's agent.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal

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
class GuestSpec:
    """Everything needed to define a guest."""

    name: str
    vcpus: int
    memory_mib: int
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    disks: tuple[DiskSpec, ...] = ()
    console_log: str | None = None  # serial console output is appended to this file
    uuid: str | None = None  # None: the hypervisor picks one (or keeps the existing one)


@dataclass(frozen=True)
class GuestInfo:
    name: str
    state: GuestState
    vcpus: int
    memory_mib: int
    uptime_seconds: float | None  # None unless running or paused


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    vcpus: int
    memory_mib: int
    cpu_model: str


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
    def start(self, name: str) -> None:
        """Boot a defined guest. Starting a running guest is a no-op."""

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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""
