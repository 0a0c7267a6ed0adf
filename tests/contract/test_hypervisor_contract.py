"""The contract every ``Hypervisor`` passes: the fake of the unit tests
(``tests/fakes/hypervisor.py``), the libvirt driver on libvirt's in-process test driver
(``test:///default``), and the libvirt driver on ``qemu:///system`` with real (tiny) QEMU
guests. ``make check`` runs the first two; the third needs libvirtd and is marked
``integration`` (``make test``).

The QEMU guests have no kernel and no disk: SeaBIOS finds nothing to boot and idles, which
is all a state machine needs, in a fraction of a second and with next to no CPU. They ignore
the ACPI power button, so ``shutdown()`` forces them off after its timeout.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.agent.drivers.base import (
    DiskSpec,
    GuestDisk,
    GuestSpec,
    GuestTags,
    Hypervisor,
    NetworkDisk,
)
from lamina.agent.drivers.fake import FakeHypervisor
from lamina.errors import Conflict, GuestNotFound, InvalidState

QEMU_URI = "qemu:///system"
#: Long enough for a real shutdown() to press the button, short enough to keep tests quick.
SHUTDOWN_TIMEOUT = 0.5


@dataclass
class Subject:
    hv: Hypervisor
    #: A new guest's spec, with a name no other test or process uses.
    spec: Callable[..., GuestSpec]


def _names(prefix: str) -> Callable[..., GuestSpec]:
    def spec(**fields: object) -> GuestSpec:
        values: dict[str, object] = {
            "name": f"{prefix}-{uuid.uuid4().hex[:10]}",
            "vcpus": 1,
            "memory_mib": 64,
        }
        values.update(fields)
        return GuestSpec(**values)  # type: ignore[arg-type]

    return spec


def _libvirt(uri: str, domain_type: str | None) -> Iterator[Subject]:
    from lamina.agent.drivers.libvirt_driver import LibvirtHypervisor

    hv = LibvirtHypervisor(uri, domain_type=domain_type)
    made: list[str] = []
    new = _names("lamina-contract")

    def spec(**fields: object) -> GuestSpec:
        guest = new(**fields)
        made.append(guest.name)
        return guest

    try:
        yield Subject(hv, spec)
    finally:
        for name in made:
            hv.undefine(name)
        hv.close()


@pytest.fixture(
    params=[
        "fake",
        "libvirt-test",
        pytest.param("libvirt-qemu", marks=pytest.mark.integration),
    ]
)
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "fake":
        yield Subject(FakeHypervisor(), _names("lamina-contract"))
    elif request.param == "libvirt-test":
        yield from _libvirt("test:///default", None)
    else:
        if shutil.which("qemu-system-x86_64") is None or not os.path.exists(
            "/var/run/libvirt/libvirt-sock"
        ):
            pytest.fail("needs qemu-system-x86_64 and libvirtd (scripts/start-libvirtd.sh)")
        yield from _libvirt(QEMU_URI, "qemu")


@pytest.fixture
def hv(subject: Subject) -> Hypervisor:
    return subject.hv


def iscsi(target: str, volume: str = "vol-0000000000000001") -> NetworkDisk:
    return NetworkDisk(
        iqn=f"iqn.2026-11.lamina:{volume}",
        host="127.0.0.1",
        target=target,
        serial=volume,
    )


# -- host ----------------------------------------------------------------------------------


def test_host_info_and_capabilities(hv: Hypervisor) -> None:
    host = hv.host_info()
    assert host.hostname and host.cpu_model
    assert host.vcpus >= 1 and host.memory_mib > 0
    assert hv.capabilities.domain_type in ("kvm", "qemu", "test")
    assert hv.capabilities.kvm == (hv.capabilities.domain_type == "kvm")


# -- lifecycle -----------------------------------------------------------------------------


def test_a_defined_guest_is_stopped_and_listed(subject: Subject) -> None:
    hv, spec = subject.hv, subject.spec(vcpus=2, memory_mib=96)
    hv.define(spec)
    info = hv.info(spec.name)
    assert (info.name, info.state, info.vcpus, info.memory_mib) == (spec.name, "stopped", 2, 96)
    assert info.uptime_seconds is None
    assert info.tags == GuestTags()
    listed = hv.list()
    assert [g.name for g in listed] == sorted(g.name for g in listed)
    assert info in listed


def test_start_and_destroy_are_idempotent(subject: Subject) -> None:
    hv, spec = subject.hv, subject.spec()
    hv.define(spec)
    hv.start(spec.name)
    info = hv.info(spec.name)
    assert info.state == "running"
    assert info.uptime_seconds is not None and info.uptime_seconds >= 0
    hv.start(spec.name)  # already running: nothing happens
    assert hv.info(spec.name).state == "running"
    hv.destroy(spec.name)
    info = hv.info(spec.name)
    assert (info.state, info.uptime_seconds) == ("stopped", None)
    hv.destroy(spec.name)  # already stopped: nothing happens
    assert hv.info(spec.name).state == "stopped"


def test_pause_resume_and_reboot(subject: Subject) -> None:
    hv, spec = subject.hv, subject.spec()
    hv.define(spec)
    hv.start(spec.name, paused=True)
    assert hv.info(spec.name).state == "paused"
    assert hv.info(spec.name).uptime_seconds is not None
    hv.start(spec.name)  # paused counts as started
    assert hv.info(spec.name).state == "paused"
    hv.pause(spec.name)  # already paused
    with pytest.raises(InvalidState):
        hv.reboot(spec.name)
    hv.resume(spec.name)
    assert hv.info(spec.name).state == "running"
    hv.resume(spec.name)  # already running
    hv.reboot(spec.name)
    assert hv.info(spec.name).state == "running"
    hv.pause(spec.name)
    assert hv.info(spec.name).state == "paused"
    hv.destroy(spec.name)
    assert hv.info(spec.name).state == "stopped"


def test_shutdown_stops_a_running_or_paused_guest_and_leaves_a_stopped_one(
    subject: Subject,
) -> None:
    hv, spec = subject.hv, subject.spec()
    hv.define(spec)
    hv.shutdown(spec.name, timeout=SHUTDOWN_TIMEOUT)  # stopped: nothing happens
    assert hv.info(spec.name).state == "stopped"
    hv.start(spec.name)
    hv.shutdown(spec.name, timeout=SHUTDOWN_TIMEOUT)
    assert hv.info(spec.name).state == "stopped"
    hv.start(spec.name, paused=True)
    hv.shutdown(spec.name, timeout=SHUTDOWN_TIMEOUT)
    info = hv.info(spec.name)
    assert (info.state, info.uptime_seconds) == ("stopped", None)


def test_a_stopped_guest_refuses_pause_resume_and_reboot(subject: Subject) -> None:
    hv, spec = subject.hv, subject.spec()
    hv.define(spec)
    for action in (hv.pause, hv.resume, hv.reboot):
        with pytest.raises(InvalidState):
            action(spec.name)
    assert hv.info(spec.name).state == "stopped"


def test_redefining_replaces_a_stopped_guest_but_not_a_running_one(subject: Subject) -> None:
    hv = subject.hv
    tags = GuestTags(deployment="0123456789abcdef", instance="i-1", created=1000.0)
    spec = subject.spec(tags=tags)
    hv.define(spec)
    assert hv.info(spec.name).tags == tags
    # Redefined (say, on a new substrate): bigger, and as old as it was.
    bigger = dataclasses.replace(spec, vcpus=2, tags=dataclasses.replace(tags, created=2000.0))
    hv.define(bigger)
    info = hv.info(spec.name)
    assert (info.vcpus, info.tags) == (2, tags)
    assert [g.name for g in hv.list()].count(spec.name) == 1
    hv.start(spec.name, paused=True)
    with pytest.raises(InvalidState):
        hv.define(spec)
    assert hv.info(spec.name).vcpus == 2


def test_undefine_removes_even_a_running_guest_and_is_idempotent(subject: Subject) -> None:
    hv, spec = subject.hv, subject.spec()
    hv.define(spec)
    hv.start(spec.name)
    hv.undefine(spec.name)
    with pytest.raises(GuestNotFound):
        hv.info(spec.name)
    assert spec.name not in {g.name for g in hv.list()}
    hv.undefine(spec.name)  # unknown: nothing happens
    hv.define(spec)  # the name is free again
    assert hv.info(spec.name).state == "stopped"


def test_an_unknown_guest_is_guest_not_found(subject: Subject) -> None:
    hv, name = subject.hv, subject.spec().name  # never defined
    calls: list[Callable[[], object]] = [
        lambda: hv.info(name),
        lambda: hv.start(name),
        lambda: hv.start(name, paused=True),
        lambda: hv.shutdown(name, timeout=SHUTDOWN_TIMEOUT),
        lambda: hv.destroy(name),
        lambda: hv.pause(name),
        lambda: hv.resume(name),
        lambda: hv.reboot(name),
        lambda: hv.attach_disk(name, iscsi("vdb")),
        lambda: hv.detach_disk(name, "vdb"),
        lambda: hv.disks(name),
    ]
    for call in calls:
        with pytest.raises(GuestNotFound) as caught:
            call()
        assert (caught.value.code, caught.value.details.get("guest")) == ("guest_not_found", name)
    hv.undefine(name)  # no error: undefine is idempotent


# -- disks ---------------------------------------------------------------------------------
#
# On a stopped guest: attaching to a running QEMU guest would make QEMU log in to the
# iSCSI target, which these tests do not run.


def test_attach_and_detach_a_network_disk(subject: Subject) -> None:
    hv = subject.hv
    root = DiskSpec(path="/var/lib/lamina-contract/root.qcow2", target="vda")
    spec = subject.spec(disks=(root,))
    hv.define(spec)
    assert hv.disks(spec.name) == [GuestDisk("vda", root.path)]

    disk = iscsi("vdb")
    hv.attach_disk(spec.name, disk)
    assert hv.disks(spec.name) == [GuestDisk("vda", root.path), GuestDisk("vdb", disk.source)]
    hv.attach_disk(spec.name, disk)  # the same disk again: nothing happens
    with pytest.raises(Conflict):
        hv.attach_disk(spec.name, iscsi("vdb", "vol-0000000000000002"))
    with pytest.raises(Conflict):
        hv.attach_disk(spec.name, iscsi("vda"))
    assert len(hv.disks(spec.name)) == 2

    # Redefining keeps the attached volume where the new definition leaves room.
    hv.define(dataclasses.replace(spec, vcpus=2))
    assert [d.target for d in hv.disks(spec.name)] == ["vda", "vdb"]

    hv.detach_disk(spec.name, "vdb")
    assert hv.disks(spec.name) == [GuestDisk("vda", root.path)]
    hv.detach_disk(spec.name, "vdb")  # not there: nothing happens
    assert hv.disks(spec.name) == [GuestDisk("vda", root.path)]


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_saves_a_running_guest_that_runs_on_and_restore_brings_it_back(
    subject: Subject, tmp_path: Path
) -> None:
    hv, spec = subject.hv, subject.spec()
    hv.define(spec)
    hv.start(spec.name)
    seen: list[str] = []
    memory = tmp_path / "memory"
    saved = hv.checkpoint(spec.name, memory, lambda: seen.append(hv.info(spec.name).state))
    assert seen == ["paused"]  # the disks are copied while it is paused
    assert hv.info(spec.name).state == "running"  # then it runs on
    assert memory.stat().st_size > 0
    host = hv.host_info()
    assert saved.domain_type == hv.capabilities.domain_type
    assert (saved.vcpus, saved.memory_mib) == (1, 64)
    assert saved.qemu_version == host.qemu_version
    if saved.machine and host.machine_types:
        assert saved.machine in host.machine_types
    hv.destroy(spec.name)
    hv.restore(spec, memory)
    assert hv.info(spec.name).state == "running"
    hv.restore(spec, memory, paused=True)  # over a running guest: it is replaced
    assert hv.info(spec.name).state == "paused"


def test_checkpoint_leaves_a_paused_guest_paused_and_refuses_a_stopped_one(
    subject: Subject, tmp_path: Path
) -> None:
    hv, spec = subject.hv, subject.spec()
    hv.define(spec)
    with pytest.raises(InvalidState):
        hv.checkpoint(spec.name, tmp_path / "memory", lambda: None)
    hv.start(spec.name)
    hv.pause(spec.name)
    hv.checkpoint(spec.name, tmp_path / "memory", lambda: None)
    assert hv.info(spec.name).state == "paused"
