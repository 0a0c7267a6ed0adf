"""``FakeHypervisor``: guests as records in a dictionary, with the real driver's rules.

It keeps what ``LibvirtHypervisor`` keeps (definition, state, start time, tags, attached
network disks) and refuses what it refuses (a running guest redefined, a paused guest
rebooted, another disk at a taken target). Nothing boots: a started guest is ``running`` at
once and a shutdown takes effect at once.

A test makes the next call of a method fail with ``fail_next("start", SomeError(...))``.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from lamina.agent.drivers.base import (
    Capabilities,
    GuestDisk,
    GuestInfo,
    GuestSpec,
    GuestState,
    GuestTags,
    HostInfo,
    Hypervisor,
    MigrationProgress,
    MigrationRequest,
    NetworkDisk,
    SavedGuest,
)
from lamina.agent.drivers.domain_xml import domain_xml
from lamina.errors import (
    BackendUnavailable,
    Conflict,
    GuestNotFound,
    InvalidRequest,
    InvalidState,
    LaminaError,
)

#: What the fake's saved guests need and its hosts have (tests change ``host`` to differ).
FAKE_QEMU = "7.2.0"
FAKE_MACHINE = "fake-7.2"


@dataclass
class FakeGuest:
    spec: GuestSpec
    state: GuestState = "stopped"
    started: float | None = None
    #: Network disks attached after the definition: target -> disk.
    attached: dict[str, NetworkDisk] = field(default_factory=dict)
    #: A migration's incoming half: paused, waiting for its state.
    incoming: bool = False

    @property
    def active(self) -> bool:
        return self.state in ("running", "paused")


class FakeHypervisor(Hypervisor):
    """An in-memory hypervisor. ``guests`` is its whole state (name -> ``FakeGuest``);
    ``calls`` records every interface call as ``(method, guest name or None)``."""

    #: Fakes a migration reaches, by the address in its destination URI (``reachable_at``).
    peers: ClassVar[dict[str, FakeHypervisor]] = {}

    def __init__(self, hostname: str = "fake-host", vcpus: int = 8, memory_mib: int = 16384):
        self.capabilities = Capabilities(domain_type="test", kvm=False, extra=("reset",))
        self.host = HostInfo(
            hostname=hostname,
            vcpus=vcpus,
            memory_mib=memory_mib,
            cpu_model="fake",
            qemu_version=FAKE_QEMU,
            machine_types=("fake", FAKE_MACHINE),
            arch="x86_64",
        )
        self.guests: dict[str, FakeGuest] = {}
        self.calls: list[tuple[str, str | None]] = []
        self._failures: dict[str, LaminaError] = {}
        self._lock = threading.RLock()
        #: Migrations never converge while set (they run until aborted).
        self.stall_migrations = False
        #: The requests migrations were started with, and the downtimes set since.
        self.migrations: list[MigrationRequest] = []
        self.downtimes: list[int] = []
        self._running: dict[str, threading.Event] = {}
        self._completed: dict[str, MigrationProgress] = {}

    # -- for tests -----------------------------------------------------------------------

    def fail_next(self, method: str, error: LaminaError) -> None:
        """Make the next call of ``method`` raise ``error`` (and do nothing else)."""
        self._failures[method] = error

    def _enter(self, method: str, name: str | None = None) -> None:
        self.calls.append((method, name))
        error = self._failures.pop(method, None)
        if error is not None:
            raise error

    def _guest(self, name: str) -> FakeGuest:
        try:
            return self.guests[name]
        except KeyError:
            raise GuestNotFound(name) from None

    def reachable_at(self, address: str) -> None:
        """Let migrations to ``qemu+...://address/...`` arrive here."""
        FakeHypervisor.peers[address] = self

    # -- the Hypervisor interface --------------------------------------------------------

    def host_info(self) -> HostInfo:
        with self._lock:
            self._enter("host_info")
            return self.host

    def define(self, spec: GuestSpec) -> None:
        with self._lock:
            self._enter("define", spec.name)
            existing = self.guests.get(spec.name)
            attached: dict[str, NetworkDisk] = {}
            if existing is not None:
                if existing.active:
                    raise InvalidState(
                        f"guest {spec.name!r} is {existing.state}; stop it to redefine",
                        guest=spec.name,
                    )
                if spec.uuid is None:
                    spec = dataclasses.replace(spec, uuid=existing.spec.uuid)
                old = existing.spec.tags
                if spec.tags is not None and old is not None and old.created is not None:
                    spec = dataclasses.replace(
                        spec, tags=dataclasses.replace(spec.tags, created=old.created)
                    )
                # Redefining keeps attached volumes at targets the new definition leaves free.
                taken = {d.target for d in spec.disks}
                attached = {t: d for t, d in existing.attached.items() if t not in taken}
            if spec.uuid is None:
                spec = dataclasses.replace(spec, uuid=str(uuid.uuid4()))
            self.guests[spec.name] = FakeGuest(spec, attached=attached)

    def start(self, name: str, paused: bool = False) -> None:
        with self._lock:
            self._enter("start", name)
            guest = self._guest(name)
            if guest.active:
                return
            guest.state = "paused" if paused else "running"
            guest.started = time.time()

    def shutdown(self, name: str, timeout: float = 30.0) -> None:
        with self._lock:
            self._enter("shutdown", name)
            self._stop(self._guest(name))

    def destroy(self, name: str) -> None:
        with self._lock:
            self._enter("destroy", name)
            self._stop(self._guest(name))

    @staticmethod
    def _stop(guest: FakeGuest) -> None:
        guest.state, guest.started = "stopped", None

    def pause(self, name: str) -> None:
        with self._lock:
            self._enter("pause", name)
            guest = self._guest(name)
            if guest.state == "paused":
                return
            if guest.state != "running":
                raise InvalidState(f"cannot pause guest {name!r}: it is {guest.state}", guest=name)
            guest.state = "paused"

    def resume(self, name: str) -> None:
        with self._lock:
            self._enter("resume", name)
            guest = self._guest(name)
            if guest.state == "running":
                return
            if guest.state != "paused":
                raise InvalidState(f"cannot resume guest {name!r}: it is {guest.state}", guest=name)
            guest.state = "running"

    def reboot(self, name: str) -> None:
        with self._lock:
            self._enter("reboot", name)
            guest = self._guest(name)
            if guest.state != "running":
                raise InvalidState(f"cannot reboot guest {name!r}: it is {guest.state}", guest=name)

    def undefine(self, name: str) -> None:
        with self._lock:
            self._enter("undefine", name)
            self.guests.pop(name, None)

    def _info(self, guest: FakeGuest) -> GuestInfo:
        uptime = None
        if guest.active and guest.started is not None:
            uptime = max(time.time() - guest.started, 0.0)
        return GuestInfo(
            name=guest.spec.name,
            state=guest.state,
            vcpus=guest.spec.vcpus,
            memory_mib=guest.spec.memory_mib,
            uptime_seconds=uptime,
            tags=guest.spec.tags or GuestTags(),
        )

    def info(self, name: str) -> GuestInfo:
        with self._lock:
            self._enter("info", name)
            return self._info(self._guest(name))

    def list(self) -> builtins.list[GuestInfo]:
        with self._lock:
            self._enter("list")
            return [self._info(self.guests[n]) for n in sorted(self.guests)]

    def _disks(self, guest: FakeGuest) -> dict[str, str | None]:
        disks: dict[str, str | None] = {d.target: d.path for d in guest.spec.disks}
        disks.update({t: d.source for t, d in guest.attached.items()})
        return disks

    def attach_disk(self, name: str, disk: NetworkDisk) -> None:
        with self._lock:
            self._enter("attach_disk", name)
            guest = self._guest(name)
            existing = self._disks(guest)
            if disk.target in existing:
                if existing[disk.target] == disk.source:
                    return
                raise Conflict(
                    f"guest {name!r} already has a disk at {disk.target} ({existing[disk.target]})",
                    guest=name,
                    target=disk.target,
                )
            guest.attached[disk.target] = disk

    def detach_disk(self, name: str, target: str, timeout: float = 30.0) -> None:
        with self._lock:
            self._enter("detach_disk", name)
            guest = self._guest(name)
            guest.attached.pop(target, None)
            guest.spec = dataclasses.replace(
                guest.spec, disks=tuple(d for d in guest.spec.disks if d.target != target)
            )

    # -- migration: the guest's record moves to the peer at once (or, stalled, never) ------

    def migratable_xml(self, name: str) -> str:
        with self._lock:
            self._enter("migratable_xml", name)
            return domain_xml(self._guest(name).spec, "test")

    def migrate(self, name: str, request: MigrationRequest) -> None:
        with self._lock:
            self._enter("migrate", name)
            guest = self._guest(name)
            if not guest.active:
                raise InvalidState(f"guest {name!r} is not running", guest=name)
            peer = self.peers.get(urlsplit(request.dest_uri).hostname or "")
            if peer is None:
                raise BackendUnavailable(f"no hypervisor at {request.dest_uri}")
            self.migrations.append(request)
            aborted = self._running[name] = threading.Event()
        if self.stall_migrations:
            aborted.wait(60)
            self._running.pop(name, None)
            raise LaminaError("operation aborted: migration out job: canceled by client")
        memory = guest.spec.memory_mib * 1024 * 1024
        with self._lock, peer._lock:
            self._running.pop(name, None)
            state: GuestState = "paused" if request.paused else guest.state
            peer.guests[name] = FakeGuest(guest.spec, state, guest.started, dict(guest.attached))
            peer._completed[name] = MigrationProgress(
                active=False, memory_total=memory, memory_processed=memory // 4, downtime_ms=42
            )
            del self.guests[name]

    def migration_progress(self, name: str, completed: bool = False) -> MigrationProgress:
        with self._lock:
            guest = self._guest(name)
            if completed:
                return self._completed.get(name, MigrationProgress(active=False))
            if name not in self._running:
                return MigrationProgress(active=False)
            memory = guest.spec.memory_mib * 1024 * 1024
            return MigrationProgress(
                active=True, memory_total=memory, memory_processed=memory // 2,
                memory_remaining=memory // 2, dirty_rate=5000,
            )  # fmt: skip

    def set_migration_downtime(self, name: str, milliseconds: int) -> None:
        with self._lock:
            self._guest(name)
            self.downtimes.append(milliseconds)

    def abort_migration(self, name: str) -> None:
        with self._lock:
            self._guest(name)
            event = self._running.get(name)
        if event is not None:
            event.set()

    def incoming(self, name: str) -> bool:
        with self._lock:
            return self._guest(name).incoming

    def disks(self, name: str) -> builtins.list[GuestDisk]:
        with self._lock:
            self._enter("disks", name)
            found = self._disks(self._guest(name))
            return [GuestDisk(target, found[target]) for target in sorted(found)]

    # -- checkpoints: the "memory" file holds the guest's record as JSON ---------------------

    def checkpoint(self, name: str, memory: Path, while_paused: Callable[[], None]) -> SavedGuest:
        with self._lock:
            self._enter("checkpoint", name)
            guest = self._guest(name)
            if not guest.active:
                raise InvalidState(
                    f"cannot checkpoint guest {name!r}: it is {guest.state}", guest=name
                )
            was = guest.state
            guest.state = "paused"
            try:
                saved = {
                    "name": name,
                    "uuid": guest.spec.uuid,
                    "vcpus": guest.spec.vcpus,
                    "memory_mib": guest.spec.memory_mib,
                    "started": guest.started,
                    "machine": FAKE_MACHINE,
                    "qemu": self.host.qemu_version,
                }
                memory.write_text(json.dumps(saved))
                while_paused()
            finally:
                guest.state = was
            return SavedGuest(
                domain_type=self.capabilities.domain_type,
                vcpus=guest.spec.vcpus,
                memory_mib=guest.spec.memory_mib,
                qemu_version=self.host.qemu_version,
                machine=FAKE_MACHINE,
                cpu_mode="custom",
                cpu_model="qemu64",
                arch="x86_64",
            )

    def restore(self, spec: GuestSpec, memory: Path, paused: bool = False) -> None:
        with self._lock:
            self._enter("restore", spec.name)
            saved = json.loads(memory.read_text())
            if saved["name"] != spec.name:
                raise InvalidRequest(f"{memory} holds guest {saved['name']}, not {spec.name}")
            existing = self.guests.get(spec.name)
            attached = existing.attached if existing is not None else {}
            restored = FakeGuest(dataclasses.replace(spec, uuid=saved["uuid"]), attached=attached)
            restored.state = "paused" if paused else "running"
            # The guest goes on from where it was saved: its clock too.
            restored.started = saved["started"]
            self.guests[spec.name] = restored
