"""LibvirtHypervisor booting a real guest under qemu:///system (TCG).

The guest is the host's Debian kernel with a busybox initramfs built here; its /init prints
``hello-from-guest`` on the serial console and sleeps. It has no ACPI handling, so
``shutdown()`` must fall back to forcing it off.
"""

from __future__ import annotations

import glob
import gzip
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from lamina.agent.drivers.base import GuestSpec
from lamina.agent.drivers.libvirt_driver import LibvirtHypervisor
from lamina.errors import BackendUnavailable, GuestNotFound

pytestmark = pytest.mark.integration

URI = "qemu:///system"
BUSYBOX = "/bin/busybox"
MARKER = b"hello-from-guest"
BOOT_TIMEOUT = 60.0
START_SCRIPT = Path(__file__).parents[2] / "scripts" / "start-libvirtd.sh"

INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo {MARKER.decode()}
while :; do /bin/busybox sleep 3600; done
"""


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One entry of a 'newc' cpio archive, the format the kernel unpacks as initramfs."""
    name_bytes = name.encode() + b"\0"
    fields = [
        0,  # ino
        mode,
        0,  # uid
        0,  # gid
        1,  # nlink
        0,  # mtime
        len(data),
        0,  # devmajor
        0,  # devminor
        rdev[0],
        rdev[1],
        len(name_bytes),
        0,  # check
    ]
    header = b"070701" + b"".join(b"%08x" % f for f in fields)
    entry = header + name_bytes
    entry += b"\0" * (-len(entry) % 4)
    entry += data + b"\0" * (-len(data) % 4)
    return entry


def build_initramfs(path: Path) -> None:
    busybox = Path(BUSYBOX).read_bytes()
    entries = [
        _cpio_entry("bin", 0o040755),
        _cpio_entry("dev", 0o040755),
        _cpio_entry("dev/console", 0o020600, rdev=(5, 1)),  # init's stdio, i.e. ttyS0
        _cpio_entry("proc", 0o040755),
        _cpio_entry("bin/busybox", 0o100755, busybox),
        _cpio_entry("init", 0o100755, INIT.encode()),
        _cpio_entry("TRAILER!!!", 0),
    ]
    path.write_bytes(gzip.compress(b"".join(entries), compresslevel=1))


def _connect_or_start() -> None:
    try:
        libvirt.open(URI).close()
        return
    except libvirt.libvirtError:
        pass
    if START_SCRIPT.exists() and os.geteuid() == 0:
        subprocess.run(["bash", str(START_SCRIPT)], check=True, timeout=120)
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError as exc:
        pytest.fail(f"libvirtd is not reachable at {URI} (see scripts/start-libvirtd.sh): {exc}")


@pytest.fixture(scope="module")
def hv() -> Iterator[LibvirtHypervisor]:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels or not os.path.exists(BUSYBOX) or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs /boot/vmlinuz-*, busybox-static and qemu-system-x86_64")
    _connect_or_start()
    driver = LibvirtHypervisor(URI, domain_type="qemu")
    yield driver
    driver.close()


@pytest.fixture
def guest(hv: LibvirtHypervisor, tmp_path: Path) -> Iterator[GuestSpec]:
    initrd = tmp_path / "initrd.gz"
    build_initramfs(initrd)
    spec = GuestSpec(
        name=f"lamina-test-{uuid.uuid4().hex[:8]}",
        vcpus=1,
        memory_mib=256,
        kernel=sorted(glob.glob("/boot/vmlinuz-*"))[-1],
        initrd=str(initrd),
        cmdline="console=ttyS0 panic=-1 quiet",
        console_log=str(tmp_path / "console.log"),
    )
    yield spec
    hv.undefine(spec.name)


def wait_for_console(path: str, marker: bytes, timeout: float, count: int = 1) -> float:
    """Seconds until ``marker`` shows up ``count`` times in the file at ``path``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if os.path.exists(path) and Path(path).read_bytes().count(marker) >= count:
            return time.monotonic() - started
        time.sleep(0.1)
    tail = Path(path).read_bytes()[-2000:] if os.path.exists(path) else b"(no console log)"
    pytest.fail(f"{marker!r} not on the console within {timeout}s; console:\n{tail.decode()}")


def test_real_guest_lifecycle(hv: LibvirtHypervisor, guest: GuestSpec) -> None:
    assert guest.console_log is not None
    hv.define(guest)
    assert hv.info(guest.name).state == "stopped"

    hv.start(guest.name)
    boot_seconds = wait_for_console(guest.console_log, MARKER, BOOT_TIMEOUT)
    print(f"\nguest printed {MARKER.decode()} {boot_seconds:.1f}s after start")

    info = hv.info(guest.name)
    assert info.state == "running"
    assert (info.vcpus, info.memory_mib) == (1, 256)
    assert info.uptime_seconds is not None and info.uptime_seconds > 0
    assert guest.name in {g.name for g in hv.list()}

    hv.pause(guest.name)
    assert hv.info(guest.name).state == "paused"
    hv.resume(guest.name)
    assert hv.info(guest.name).state == "running"

    hv.reboot(guest.name)
    assert hv.info(guest.name).state == "running"
    wait_for_console(guest.console_log, MARKER, BOOT_TIMEOUT, count=2)  # booted again

    # busybox ignores the ACPI power button: shutdown() must force it off after the timeout.
    started = time.monotonic()
    hv.shutdown(guest.name, timeout=2.0)
    elapsed = time.monotonic() - started
    info = hv.info(guest.name)
    assert (info.state, info.uptime_seconds) == ("stopped", None)
    assert 2.0 <= elapsed < 10.0

    hv.start(guest.name)
    assert hv.info(guest.name).state == "running"
    hv.destroy(guest.name)
    assert hv.info(guest.name).state == "stopped"

    hv.undefine(guest.name)
    with pytest.raises(GuestNotFound):
        hv.info(guest.name)
    assert guest.name not in {g.name for g in hv.list()}


def test_host_info(hv: LibvirtHypervisor) -> None:
    host = hv.host_info()
    assert host.vcpus >= 1
    assert host.memory_mib > 0
    assert host.hostname


def test_unreachable_daemon() -> None:
    with pytest.raises(BackendUnavailable):
        LibvirtHypervisor("qemu+unix:///system?socket=/nonexistent/sock", domain_type="qemu")
