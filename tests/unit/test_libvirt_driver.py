"""LibvirtHypervisor against libvirt's real test driver (``test:///default``).

``test:///default`` is in-memory state shared by every open connection of the process; it is
reset to one running guest named 'test' only when the last connection closes. So every test
closes each driver it builds (``make`` below).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lamina.agent.drivers import HYPERVISORS, load_hypervisor
from lamina.agent.drivers.base import DiskSpec, GuestDisk, GuestSpec, NetworkDisk, NicSpec
from lamina.agent.drivers.libvirt_driver import LibvirtHypervisor
from lamina.errors import (
    BackendUnavailable,
    ConfigError,
    Conflict,
    GuestNotFound,
    InvalidState,
)

SPEC = GuestSpec(
    name="web-1",
    vcpus=2,
    memory_mib=256,
    kernel="/boot/vmlinuz",
    initrd="/boot/initrd.img",
    cmdline="console=ttyS0",
    disks=(DiskSpec(path="/tmp/root.img", target="vda", format="raw", readonly=True),),
    console_log="/tmp/web-1.log",
)


@pytest.fixture
def make() -> Iterator[Callable[..., LibvirtHypervisor]]:
    drivers: list[LibvirtHypervisor] = []

    def make(**options: Any) -> LibvirtHypervisor:
        driver = LibvirtHypervisor(**{"uri": "test:///default", **options})
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()


@pytest.fixture
def hv(make: Callable[..., LibvirtHypervisor]) -> LibvirtHypervisor:
    return make()


def test_capabilities_and_domain_type(make: Callable[..., LibvirtHypervisor]) -> None:
    hv = make()
    assert hv.capabilities.domain_type == "test"
    assert hv.capabilities.kvm is False
    assert make(domain_type="qemu").domain_type == "qemu"


def test_host_info(hv: LibvirtHypervisor) -> None:
    host = hv.host_info()
    assert host.hostname
    assert host.vcpus >= 1
    assert host.memory_mib > 0
    assert host.cpu_model


def test_full_lifecycle(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    info = hv.info("web-1")
    assert (info.state, info.vcpus, info.memory_mib, info.uptime_seconds) == (
        "stopped",
        2,
        256,
        None,
    )

    hv.start("web-1")
    hv.start("web-1")  # no-op
    time.sleep(0.02)
    info = hv.info("web-1")
    assert info.state == "running"
    assert info.uptime_seconds is not None and 0 < info.uptime_seconds < 60

    hv.pause("web-1")
    hv.pause("web-1")  # no-op
    info = hv.info("web-1")
    assert info.state == "paused"
    assert info.uptime_seconds is not None and info.uptime_seconds > 0

    hv.resume("web-1")
    hv.resume("web-1")  # no-op
    assert hv.info("web-1").state == "running"

    hv.reboot("web-1")
    assert hv.info("web-1").state == "running"

    hv.shutdown("web-1", timeout=1.0)  # the test driver stops at once
    info = hv.info("web-1")
    assert (info.state, info.uptime_seconds) == ("stopped", None)
    hv.shutdown("web-1", timeout=1.0)  # no-op

    hv.start("web-1")
    hv.destroy("web-1")
    assert hv.info("web-1").state == "stopped"
    hv.destroy("web-1")  # no-op

    hv.undefine("web-1")
    with pytest.raises(GuestNotFound):
        hv.info("web-1")
    hv.undefine("web-1")  # no-op


def test_list_includes_predefined_guest(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    guests = {g.name: g for g in hv.list()}
    assert set(guests) == {"test", "web-1"}
    assert guests["test"].state == "running"
    assert guests["test"].uptime_seconds is None  # not started by Lamina: unknown
    assert guests["web-1"].state == "stopped"


def test_redefine_stopped_guest_replaces_it(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    hv.define(GuestSpec(name="web-1", vcpus=1, memory_mib=128))
    info = hv.info("web-1")
    assert (info.vcpus, info.memory_mib) == (1, 128)


def test_define_running_guest_is_invalid_state(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    hv.start("web-1")
    with pytest.raises(InvalidState):
        hv.define(SPEC)
    hv.pause("web-1")
    with pytest.raises(InvalidState):
        hv.define(SPEC)


def test_shutdown_of_paused_guest(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    hv.start("web-1")
    hv.pause("web-1")
    hv.shutdown("web-1", timeout=1.0)
    assert hv.info("web-1").state == "stopped"


def test_undefine_running_guest_destroys_it(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    hv.start("web-1")
    hv.undefine("web-1")
    assert "web-1" not in {g.name for g in hv.list()}


@pytest.mark.parametrize(
    "call",
    [
        lambda hv: hv.info("nope"),
        lambda hv: hv.start("nope"),
        lambda hv: hv.shutdown("nope", 1.0),
        lambda hv: hv.destroy("nope"),
        lambda hv: hv.pause("nope"),
        lambda hv: hv.resume("nope"),
        lambda hv: hv.reboot("nope"),
    ],
)
def test_unknown_guest(hv: LibvirtHypervisor, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GuestNotFound) as excinfo:
        call(hv)
    assert excinfo.value.details == {"guest": "nope"}


@pytest.mark.parametrize("action", ["pause", "resume", "reboot"])
def test_actions_on_stopped_guest_are_invalid_state(hv: LibvirtHypervisor, action: str) -> None:
    hv.define(SPEC)
    with pytest.raises(InvalidState):
        getattr(hv, action)("web-1")


def test_reboot_paused_guest_is_invalid_state(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    hv.start("web-1")
    hv.pause("web-1")
    with pytest.raises(InvalidState):
        hv.reboot("web-1")


def test_bad_uri_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable) as excinfo:
        LibvirtHypervisor("qemu+unix:///system?socket=/nonexistent/libvirt-sock", "qemu")
    assert "/nonexistent/libvirt-sock" in excinfo.value.message
    assert excinfo.value.status == 503


def test_close_then_reuse_reconnects(hv: LibvirtHypervisor) -> None:
    hv.close()
    assert {g.name for g in hv.list()} == {"test"}  # a new connection: fresh test state


def test_registry() -> None:
    assert HYPERVISORS["libvirt"] is LibvirtHypervisor
    hv = load_hypervisor("libvirt", uri="test:///default")
    assert isinstance(hv, LibvirtHypervisor)
    hv.close()
    with pytest.raises(ConfigError) as excinfo:
        load_hypervisor("vmware")
    assert "'vmware'" in excinfo.value.message
    assert "libvirt" in excinfo.value.message


def test_start_time_is_kept_in_live_metadata(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    hv.start("web-1")
    live = hv._with_domain("web-1", lambda dom: dom.XMLDesc(0))
    assert "https://lamina.dev/xmlns/guest/1" in live
    assert "<lamina:started>" in live
    assert hv._started == {}  # no in-memory fallback needed on the test driver


def test_one_driver_shared_by_threads(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            for _ in range(200):
                hv.list()
                hv.info("web-1")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(50):
        hv.start("web-1")
        hv.pause("web-1")
        hv.resume("web-1")
        hv.destroy("web-1")
    for thread in threads:
        thread.join()
    assert errors == []


# -- iSCSI disks (hot-plug; on the test driver, edits of the definition) ---------------------

VOLUME_DISK = NetworkDisk(
    iqn="iqn.2026-11.lamina:vol-0123456789abcdef",
    host="127.0.0.1",
    target="vdb",
    format="qcow2",
    serial="vol-0123456789abcdef",
)


def test_attach_and_detach_an_iscsi_disk(hv: LibvirtHypervisor) -> None:
    hv.define(SPEC)
    try:
        hv.attach_disk(SPEC.name, VOLUME_DISK)
        hv.attach_disk(SPEC.name, VOLUME_DISK)  # the same disk again: a no-op
        assert hv.disks(SPEC.name) == [
            GuestDisk("vda", "/tmp/root.img"),
            GuestDisk("vdb", "iscsi://127.0.0.1:3260/iqn.2026-11.lamina:vol-0123456789abcdef/1"),
        ]
        other = dataclasses.replace(VOLUME_DISK, iqn="iqn.2026-11.lamina:vol-00000000")
        with pytest.raises(Conflict, match="already has a disk at vdb"):
            hv.attach_disk(SPEC.name, other)
        # Redefining the guest (a stopped one) keeps its attached volumes.
        hv.define(SPEC)
        assert [d.target for d in hv.disks(SPEC.name)] == ["vda", "vdb"]
        hv.start(SPEC.name)
        hv.detach_disk(SPEC.name, "vdb")
        hv.detach_disk(SPEC.name, "vdb")  # idempotent
        assert [d.target for d in hv.disks(SPEC.name)] == ["vda"]
    finally:
        hv.undefine(SPEC.name)
    with pytest.raises(GuestNotFound):
        hv.attach_disk(SPEC.name, VOLUME_DISK)
    with pytest.raises(GuestNotFound):
        hv.disks(SPEC.name)


def test_start_paused_with_nics(hv: LibvirtHypervisor) -> None:
    """A guest with NICs (both kinds) defines; started paused it waits for resume()."""
    nics = (
        NicSpec(mac="52:54:00:00:00:01", tap="lmt525400000001"),
        NicSpec(mac="52:54:00:00:00:02", tap="lmt525400000002", bridge="lmb000000000001"),
    )
    hv.define(SPEC)
    try:
        hv.attach_disk(SPEC.name, VOLUME_DISK)
        # Redefined with NICs, it keeps its attached volume.
        hv.define(dataclasses.replace(SPEC, nics=nics))
        assert [d.target for d in hv.disks(SPEC.name)] == ["vda", "vdb"]
        hv.start("web-1", paused=True)
        assert hv.info("web-1").state == "paused"
        hv.start("web-1", paused=True)  # a paused guest is left alone
        hv.resume("web-1")
        assert hv.info("web-1").state == "running"
    finally:
        hv.undefine("web-1")
