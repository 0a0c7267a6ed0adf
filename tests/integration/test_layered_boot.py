"""The sample channel's layered appliances (``scripts/build-sample-channel.sh``) booted for
real under QEMU (TCG), directly, without libvirt: exactly as the manager boots them. The
substrate's kernel and initramfs, read-only squashfs layers, an ext4 instance layer and a
config disk, each found by its virtio serial, never by its place on the command line. Block
volumes are hot-plugged over QMP as Lamina's manager has libvirt do it: a virtio-blk disk whose
serial is the volume id."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT

from lamina.channels.build import build_channel, mkfs_erofs_argv, mksquashfs_argv
from lamina.channels.signing import generate_key, load_private_key

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed"
    ),
]

READY = "lamina-base: ready"
# TCG boots take ~3-5 s here; generous for a loaded 2-core machine.
BOOT_TIMEOUT = 180.0
# From the ACPI power button to QEMU's exit: libvirt's graceful shutdown gives the guest
# 10 s before Lamina forces it off; the substrate takes ~2.5 s under TCG.
POWEROFF_TIMEOUT = 15.0


@dataclass(frozen=True)
class Channel:
    sources: Path
    kernel: Path
    initrd: Path
    cmdline: str
    layers: dict[str, Path]  # squashfs images by appliance name
    kernel_version: str


@dataclass(frozen=True)
class Disk:
    serial: str
    path: Path
    readonly: bool = True


def build(out: Path, *options: str) -> Channel:
    script = ROOT / "scripts" / "build-sample-channel.sh"
    subprocess.run(["bash", str(script), str(out), *options], check=True, timeout=600)
    sources = out / "sources"
    base = ET.parse(sources / "lamina-base" / "appliance.xml").getroot()
    kernel = base.find("boot/kernel")
    initrd = base.find("boot/initrd")
    assert kernel is not None and initrd is not None
    layers = {}
    for name, tree in (
        ("lamina-base", "rootfs"),
        ("webserv", "layer"),
        ("dnsserv", "layer"),
        ("diskprobe", "layer"),
        ("netprobe", "layer"),
        ("mailserv", "layer"),
    ):
        image = out / f"{name}.squashfs"
        subprocess.run(
            mksquashfs_argv(sources / name / tree, image), check=True, capture_output=True
        )
        layers[name] = image
    return Channel(
        sources=sources,
        kernel=sources / "lamina-base" / kernel.attrib["source"],
        initrd=sources / "lamina-base" / initrd.attrib["source"],
        cmdline=base.findtext("boot/cmdline", "").strip(),
        layers=layers,
        kernel_version=max(
            (p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*")),
            key=kernel_sort_key,
        ),
    )


def kernel_sort_key(version: str) -> list[int]:
    """Enough of ``sort -V`` for Debian's kernel versions (6.1.0-56-amd64)."""
    return [int(part) for part in re.findall(r"\d+", version)]


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Channel:
    return build(tmp_path_factory.mktemp("channel"))


def make_upper(path: Path) -> Path:
    """An empty instance layer, formatted as the host formats it."""
    with path.open("wb") as f:
        f.truncate(256 * 1024 * 1024)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(path)],
        check=True,
    )
    return path


def make_config(
    path: Path,
    variables: dict[str, str],
    templates: list[str],
    host: str,
    extra: dict[str, str] | None = None,
) -> Path:
    """The config disk: a ustar archive of variables, templates and hostname, padded, and
    the ``extra`` files (``instance``, ``token``), each mode 0644 as the agent writes them."""
    files = {
        "variables": "".join(f"{name}\t{value}\n" for name, value in variables.items()),
        "templates": "".join(f"{p}\n" for p in templates),
        "hostname": f"{host}\n",
        **(extra or {}),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    path.write_bytes(data + b"\0" * (-len(data) % 512))
    return path


def start(
    channel: Channel,
    layers: list[str],
    disks: list[Disk],
    console: Path,
    *extra: str,
    prefix: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start QEMU with ``disks`` in the given order on the command line; the console goes
    to ``console``, QEMU's own output next to it (``.stderr``). ``prefix`` runs it under
    another command (``ip netns exec NAME``, which execs it: the process is QEMU)."""
    argv = [
        *prefix, "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
        "-monitor", "none", "-nic", "none", "-serial", f"file:{console}",
        "-kernel", str(channel.kernel), "-initrd", str(channel.initrd),
        "-append", " ".join(filter(None, [
            "console=ttyS0", channel.cmdline,
            f"lamina.layers={','.join(layers)}", "lamina.upper=upper", "lamina.config=config",
        ])),
        *extra,
    ]  # fmt: skip
    for n, disk in enumerate(disks):
        readonly = ",readonly=on" if disk.readonly else ""
        argv += [
            "-drive", f"file={disk.path},if=none,id=d{n},format=raw{readonly}",
            "-device", f"virtio-blk-pci,drive=d{n},id=disk{n},serial={disk.serial}",
        ]  # fmt: skip
    with console.with_suffix(".stderr").open("wb") as errors:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors)


def wait_ready(qemu: subprocess.Popen[bytes], console: Path) -> str:
    """The console once the substrate says it is ready (or the initramfs reports an
    error, or QEMU exits, or BOOT_TIMEOUT passes)."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    text = ""
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        if READY in text or "lamina-init: ERROR" in text:
            return text
        if qemu.poll() is not None:
            stderr = console.with_suffix(".stderr").read_text()
            return f"{text}\nQEMU exited {qemu.returncode}: {stderr}"
        time.sleep(0.2)
    return f"{text}\n(no {READY!r} after {BOOT_TIMEOUT} s)"


def stop(qemu: subprocess.Popen[bytes]) -> None:
    """Stop QEMU if it still runs, as a forced power-off would."""
    if qemu.poll() is not None:
        return
    qemu.terminate()
    try:
        qemu.wait(timeout=30)
    except subprocess.TimeoutExpired:
        qemu.kill()
        qemu.wait()


def boot(channel: Channel, layers: list[str], disks: list[Disk], console: Path) -> str:
    """Boot once with ``disks`` in the given order on the command line; return the console
    once the substrate says it is ready (or the initramfs reports an error)."""
    qemu = start(channel, layers, disks, console)
    try:
        return wait_ready(qemu, console)
    finally:
        stop(qemu)


def qmp(socket_path: Path, command: str) -> None:
    """Run one QMP command (after the capabilities handshake) on QEMU's QMP socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(socket_path))
        replies = sock.makefile("rb")

        def call(name: str) -> None:
            sock.sendall(json.dumps({"execute": name}).encode() + b"\r\n")
            while True:  # events (e.g. POWERDOWN) may come before the reply
                line = replies.readline()
                assert line, f"QMP closed before answering {name}"
                reply = json.loads(line)
                assert "error" not in reply, reply
                if "return" in reply:
                    return

        assert "QMP" in json.loads(replies.readline())  # the greeting
        call("qmp_capabilities")
        call(command)


class Qmp:
    """A QMP session on QEMU's socket: commands with arguments, and the events QEMU sends."""

    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not socket_path.exists():  # QEMU makes it while starting
            assert time.monotonic() < deadline, f"no QMP socket {socket_path}"
            time.sleep(0.1)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(socket_path))
        self.replies = self.sock.makefile("rb")
        self.events: list[dict[str, Any]] = []
        assert "QMP" in self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.replies.readline()
        assert line, "QMP closed"
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, name: str, **arguments: Any) -> Any:
        command: dict[str, Any] = {"execute": name}
        if arguments:
            command["arguments"] = arguments
        self.sock.sendall(json.dumps(command).encode() + b"\r\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            assert "error" not in reply, (command, reply)
            return reply["return"]

    def wait_event(self, name: str, timeout: float, **data: Any) -> dict[str, Any]:
        """The first event ``name`` (received earlier or within ``timeout``) whose data
        has the given items."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and data.items() <= event.get("data", {}).items():
                    self.events.remove(event)
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no QMP event {name} {data} after {timeout} s")
            self.sock.settimeout(left)
            try:
                message = self._read()
            except TimeoutError:
                continue
            finally:
                self.sock.settimeout(30)
            if "event" in message:
                self.events.append(message)

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace("\r", "").splitlines()]


def line_starting(text: str, prefix: str) -> str:
    found = [line for line in lines(text) if line.startswith(prefix)]
    assert len(found) == 1, f"expected one line starting {prefix!r} in:\n{text}"
    return found[0]


def assert_ready(text: str) -> None:
    assert "lamina-init: ERROR" not in text, text
    assert READY in lines(text), text


def test_the_sample_channel_builds(channel: Channel, tmp_path: Path) -> None:
    key = tmp_path / "channel.key"
    generate_key(key)
    out = tmp_path / "public"
    build_channel(channel.sources, out, load_private_key(key))
    feed = (out / "channel.rss").read_text()
    for name in ("lamina-base", "webserv", "dnsserv", "diskprobe", "netprobe", "mailserv"):
        assert f'name="{name}"' in feed


def test_webserv_boots_twice_on_one_instance_layer(channel: Channel, tmp_path: Path) -> None:
    upper = make_upper(tmp_path / "upper.img")
    config = make_config(
        tmp_path / "config.tar",
        {"domain": "example.org", "port": "8080"},
        ["/etc/webserv/site.conf", "/srv/www/index.html"],
        "web1",
    )
    base, web = channel.layers["lamina-base"], channel.layers["webserv"]
    # Serial order is l0, l1, upper, config; the command line says otherwise.
    first = boot(
        channel,
        ["l0", "l1"],
        [Disk("config", config), Disk("upper", upper, False), Disk("l1", web), Disk("l0", base)],
        tmp_path / "console-1.log",
    )
    assert_ready(first)
    got = lines(first)
    assert f"lamina-init: kernel {channel.kernel_version}" in got
    assert "lamina-init: layers l0,l1 upper upper config config" in got
    assert "lamina-init: layer l0 is /dev/vdd (squashfs)" in got
    assert "lamina-init: rendered 2 templates" in got
    assert "lamina-base: release lamina-base 1.0.0" in got
    assert "lamina-base: boot 1" in got
    assert "webserv: serving example.org on port 8080" in got
    assert "webserv: title Welcome to example.org" in got
    site_id = line_starting(first, "webserv: site-id ")
    assert len(site_id.split()[-1]) == 36
    print(line_starting(first, "lamina-base: uptime "))

    second = boot(
        channel,
        ["l0", "l1"],
        [Disk("l0", base), Disk("upper", upper, False), Disk("l1", web), Disk("config", config)],
        tmp_path / "console-2.log",
    )
    assert_ready(second)
    got = lines(second)
    assert "lamina-base: boot 2" in got
    assert site_id in got
    assert "lamina-init: templates already rendered on an earlier boot" in got
    assert not any(line.startswith("lamina-init: rendered") for line in got)
    assert "webserv: serving example.org on port 8080" in got
    print(line_starting(second, "lamina-base: uptime "))


def test_values_are_inserted_literally(channel: Channel, tmp_path: Path) -> None:
    """The guest's renderer matches lamina.formats.variables.render: & \\ / $ in a value
    are plain text, a placeholder inside a value is not rendered again, and the port's
    default still comes from the host (the guest has no defaults of its own)."""
    domain = r"a&b\1/$x{{ port }}"
    upper = make_upper(tmp_path / "upper.img")
    config = make_config(
        tmp_path / "config.tar",
        {"domain": domain, "port": "80"},
        ["/etc/webserv/site.conf", "/srv/www/index.html"],
        "web2",
    )
    text = boot(
        channel,
        ["l0", "l1"],
        [
            Disk("l1", channel.layers["webserv"]),
            Disk("config", config),
            Disk("l0", channel.layers["lamina-base"]),
            Disk("upper", upper, False),
        ],
        tmp_path / "console.log",
    )
    assert_ready(text)
    assert f"webserv: serving {domain} on port 80" in lines(text)
    assert f"webserv: title Welcome to {domain}" in lines(text)


def test_an_instance_layer_survives_a_substrate_upgrade(
    channel: Channel, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Same instance layer, webserv layer and config; l0 replaced by lamina-base 1.1.0."""
    newer = build(tmp_path_factory.mktemp("channel-1.1.0"), "--substrate-version", "1.1.0")
    definition = (newer.sources / "lamina-base" / "appliance.xml").read_text()
    assert "<version>1.1.0</version>" in definition
    upper = make_upper(tmp_path / "upper.img")
    config = make_config(
        tmp_path / "config.tar",
        {"domain": "example.com", "port": "80"},
        ["/etc/webserv/site.conf", "/srv/www/index.html"],
        "web3",
    )
    web = channel.layers["webserv"]
    disks = [Disk("upper", upper, False), Disk("l1", web), Disk("config", config)]
    old = boot(channel, ["l0", "l1"], [Disk("l0", channel.layers["lamina-base"]), *disks],
               tmp_path / "console-1.log")  # fmt: skip
    assert_ready(old)
    assert "lamina-base: release lamina-base 1.0.0" in lines(old)
    site_id = line_starting(old, "webserv: site-id ")

    new = boot(newer, ["l0", "l1"], [*disks, Disk("l0", newer.layers["lamina-base"])],
               tmp_path / "console-2.log")  # fmt: skip
    assert_ready(new)
    got = lines(new)
    assert "lamina-base: release lamina-base 1.1.0" in got
    assert "lamina-base: boot 2" in got
    assert site_id in got
    assert "webserv: serving example.com on port 80" in got


def test_a_missing_disk_is_reported(channel: Channel, tmp_path: Path) -> None:
    """No config disk: the initramfs names the serial it waited for and stays up."""
    text = boot(
        channel,
        ["l0", "l1"],
        [
            Disk("l0", channel.layers["lamina-base"]),
            Disk("l1", channel.layers["webserv"]),
            Disk("upper", make_upper(tmp_path / "upper.img"), False),
        ],
        tmp_path / "console.log",
    )
    assert "lamina-init: ERROR no disk with serial(s) config after 10 s" in text, text
    assert "Kernel panic" not in text


def test_dnsserv_answers_for_its_domain(channel: Channel, tmp_path: Path) -> None:
    """Also on an erofs layer: the initramfs takes either format. Without a NIC it still
    answers on 127.0.0.1 (its check), for the clients on its (no) networks."""
    erofs = tmp_path / "dnsserv.erofs"
    subprocess.run(
        mkfs_erofs_argv(channel.sources / "dnsserv" / "layer", erofs),
        check=True,
        capture_output=True,
    )
    upper = make_upper(tmp_path / "upper.img")
    config = make_config(
        tmp_path / "config.tar",
        {"domain": "dns.example.net", "address": "192.0.2.77", "records": "", "allow_from": ""},
        [],
        "dns1",
    )
    text = boot(
        channel,
        ["l0", "l1"],
        [
            Disk("upper", upper, False),
            Disk("l1", erofs),
            Disk("config", config),
            Disk("l0", channel.layers["lamina-base"]),
        ],
        tmp_path / "console.log",
    )
    assert_ready(text)
    got = lines(text)
    assert "lamina-init: layer l1 is /dev/vdb (erofs)" in got
    assert "lamina-init: rendered 0 templates" in got
    assert "lamina-base: boot 1" in got
    assert "dnsserv: dns.example.net -> 192.0.2.77" in got
    assert "dnsserv: clients on its own networks" in got
    assert not [line for line in got if line.startswith("dnsserv: answering on")], text
    print(line_starting(text, "lamina-base: uptime "))


def test_the_power_button_powers_off_cleanly(channel: Channel, tmp_path: Path) -> None:
    """libvirt's graceful shutdown presses the ACPI power button (QMP system_powerdown):
    acpid and busybox init stop everything, leave the instance layer's ext4 clean, and
    power off; QEMU exits by itself. The next boot finds what the first one wrote."""
    upper = make_upper(tmp_path / "upper.img")
    config = make_config(
        tmp_path / "config.tar",
        {"domain": "example.org", "port": "8080"},
        ["/etc/webserv/site.conf", "/srv/www/index.html"],
        "web4",
    )
    disks = [
        Disk("l0", channel.layers["lamina-base"]),
        Disk("l1", channel.layers["webserv"]),
        Disk("upper", upper, False),
        Disk("config", config),
    ]
    console = tmp_path / "console-1.log"
    monitor = tmp_path / "qmp.sock"
    qemu = start(channel, ["l0", "l1"], disks, console,
                 "-qmp", f"unix:{monitor},server=on,wait=off")  # fmt: skip
    try:
        first = wait_ready(qemu, console)
        assert_ready(first)
        assert "lamina-base: boot 1" in lines(first)
        pressed = time.monotonic()
        qmp(monitor, "system_powerdown")
        try:
            qemu.wait(timeout=POWEROFF_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"still running {POWEROFF_TIMEOUT} s after the power button:\n"
                + console.read_text(errors="replace")
            )
        took = time.monotonic() - pressed
    finally:
        stop(qemu)
    text = console.read_text(errors="replace")
    print(f"power button to QEMU exit: {took:.2f} s")
    assert qemu.returncode == 0, text
    got = lines(text)
    assert "lamina-base: power button pressed, powering off" in got, text
    assert "lamina-base: instance layer clean" in got, text
    assert not any("WARNING" in line for line in got), text

    header = subprocess.run(
        ["dumpe2fs", "-h", str(upper)], check=True, capture_output=True, text=True
    ).stdout
    assert re.search(r"^Filesystem state:\s+clean$", header, re.MULTILINE), header
    features = line_starting(header, "Filesystem features:")
    assert "needs_recovery" not in features.split(), header

    second = boot(channel, ["l0", "l1"], disks, tmp_path / "console-2.log")
    assert_ready(second)
    assert "lamina-base: boot 2" in lines(second)
    assert line_starting(first, "webserv: site-id ") in lines(second)


# Hot-plug of block volumes: QEMU's default machine (i440fx, what Lamina's domains use)
# hot-plugs PCI devices through ACPI (acpiphp, built into Debian's kernel); device_del asks
# the guest to eject the device and completes, with a DEVICE_DELETED event, when it has.
VOLUME_SERIAL = "vol-0123456789abcdef"
MiB = 1024 * 1024
# The watchers poll every second; generous for a loaded 2-core machine under TCG.
HOTPLUG_TIMEOUT = 60.0
ASKFIRST = "Please press Enter to activate this console."


def wait_line(qemu: subprocess.Popen[bytes], console: Path, pattern: str, after: int = 0) -> str:
    """The first console line (from the ``after``-th line on) matching the regular
    expression ``pattern``, waiting up to HOTPLUG_TIMEOUT. Busybox init's prompt has no
    newline: the first line printed after it follows it on the same line."""
    deadline = time.monotonic() + HOTPLUG_TIMEOUT
    while time.monotonic() < deadline:
        for line in guest_lines(console.read_text(errors="replace"))[after:]:
            if re.fullmatch(pattern, line):
                return line
        assert qemu.poll() is None, f"QEMU exited {qemu.returncode}"
        time.sleep(0.1)
    pytest.fail(f"no line matching {pattern!r} after {HOTPLUG_TIMEOUT} s:\n"
                + console.read_text(errors="replace"))  # fmt: skip


def guest_lines(text: str) -> list[str]:
    """lines(), with busybox init's prompt taken off the line it shares."""
    return [line.removeprefix(ASKFIRST).lstrip() for line in lines(text)]


def console_length(console: Path) -> int:
    """The number of complete console lines: the last may still grow (init's prompt)."""
    return max(0, len(lines(console.read_text(errors="replace"))) - 1)


def plug(monitor: Qmp, node: str, path: Path, serial: str) -> None:
    """Hot-plug the raw file ``path`` as a virtio-blk disk with this serial."""
    monitor.execute("blockdev-add", driver="raw", **{"node-name": node},
                    file={"driver": "file", "filename": str(path)})  # fmt: skip
    monitor.execute("device_add", driver="virtio-blk-pci", drive=node, id=f"dev-{node}",
                    serial=serial)  # fmt: skip


def unplug(monitor: Qmp, device: str, node: str | None = None) -> float:
    """Hot-unplug a disk; return how long the guest took to release it (device_del to
    DEVICE_DELETED). Then QEMU lets go of the file (blockdev-del) when it was hot-plugged."""
    asked = time.monotonic()
    monitor.execute("device_del", id=device)
    monitor.wait_event("DEVICE_DELETED", HOTPLUG_TIMEOUT, device=device)
    took = time.monotonic() - asked
    if node is not None:
        monitor.execute("blockdev-del", **{"node-name": node})
    return took


def power_off(qemu: subprocess.Popen[bytes], monitor: Qmp, console: Path) -> None:
    monitor.execute("system_powerdown")
    try:
        qemu.wait(timeout=POWEROFF_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {POWEROFF_TIMEOUT} s after the power button:\n"
                    + console.read_text(errors="replace"))  # fmt: skip
    assert qemu.returncode == 0


def probe_disks(channel: Channel, upper: Path, host: str) -> list[Disk]:
    """The disks of a diskprobe instance (no variables, no templates)."""
    config = make_config(upper.with_suffix(".config"), {}, [], host)
    return [
        Disk("l0", channel.layers["lamina-base"]),
        Disk("l1", channel.layers["diskprobe"]),
        Disk("upper", upper, False),
        Disk("config", config),
    ]


def test_a_volume_moves_between_instances(channel: Channel, tmp_path: Path) -> None:
    """A zeroed volume hot-plugged into instance vm-a gets vm-a's pattern; unplugged, and
    hot-plugged into instance vm-b, it still holds it; an extended copy shows its new size."""
    volume = tmp_path / "volume.img"
    with volume.open("wb") as f:
        f.truncate(64 * MiB)
    disk_line = rf"lamina-base: disk (vd[a-z]+) appeared: serial {VOLUME_SERIAL}, (\d+) bytes"

    # --- vm-a: the first attach writes the pattern ---
    console = tmp_path / "console-a.log"
    disks = probe_disks(channel, make_upper(tmp_path / "a.img"), "vm-a")
    qemu = start(channel, ["l0", "l1"], disks, console,
                 "-qmp", f"unix:{tmp_path / 'qmp-a.sock'},server=on,wait=off")  # fmt: skip
    try:
        boot_text = wait_ready(qemu, console)
        assert_ready(boot_text)
        assert "diskprobe: watching for volumes" in lines(boot_text)
        # The initramfs' own disks are not announced.
        assert not any(line.startswith("lamina-base: disk") for line in lines(boot_text))
        monitor = Qmp(tmp_path / "qmp-a.sock")
        mark = console_length(console)
        plugged = time.monotonic()
        plug(monitor, "vol", volume, VOLUME_SERIAL)
        appeared = wait_line(qemu, console, disk_line, mark)
        seen = time.monotonic() - plugged
        match = re.fullmatch(disk_line, appeared)
        assert match and match[2] == str(64 * MiB), appeared
        name = match[1]
        wait_line(qemu, console, rf"diskprobe: {name} is {VOLUME_SERIAL}, {64 * MiB} bytes", mark)
        wait_line(qemu, console, rf"diskprobe: {name} wrote LAMINA-PATTERN from vm-a", mark)
        released = unplug(monitor, "dev-vol", "vol")
        deleted = time.monotonic()
        wait_line(qemu, console, rf"lamina-base: disk {name} gone", mark)
        gone = time.monotonic() - deleted
        print(f"vm-a: device_add to 'appeared' {seen:.2f} s; device_del to DEVICE_DELETED "
              f"{released:.2f} s, then 'gone' {gone:.2f} s later")  # fmt: skip
        power_off(qemu, monitor, console)
        monitor.close()
    finally:
        stop(qemu)
    text = console.read_text(errors="replace")
    assert not any("WARNING" in line for line in lines(text)), text
    with volume.open("rb") as f:
        assert f.read(512) == b"LAMINA-PATTERN from vm-a\n".ljust(512, b"\0")

    # --- vm-b: the same volume holds vm-a's pattern; extended, its new size shows ---
    bigger = tmp_path / "volume-bigger.img"
    shutil.copyfile(volume, bigger)
    with bigger.open("r+b") as f:
        f.truncate(96 * MiB)
    console = tmp_path / "console-b.log"
    disks = probe_disks(channel, make_upper(tmp_path / "b.img"), "vm-b")
    qemu = start(channel, ["l0", "l1"], disks, console,
                 "-qmp", f"unix:{tmp_path / 'qmp-b.sock'},server=on,wait=off")  # fmt: skip
    try:
        assert_ready(wait_ready(qemu, console))
        monitor = Qmp(tmp_path / "qmp-b.sock")
        mark = console_length(console)
        plug(monitor, "vol", volume, VOLUME_SERIAL)
        match = re.fullmatch(disk_line, wait_line(qemu, console, disk_line, mark))
        assert match and match[2] == str(64 * MiB)
        wait_line(qemu, console, rf"diskprobe: {match[1]} holds LAMINA-PATTERN from vm-a", mark)
        unplug(monitor, "dev-vol", "vol")
        wait_line(qemu, console, rf"lamina-base: disk {match[1]} gone", mark)

        mark = console_length(console)
        plug(monitor, "vol2", bigger, VOLUME_SERIAL)
        match = re.fullmatch(disk_line, wait_line(qemu, console, disk_line, mark))
        assert match and match[2] == str(96 * MiB)
        wait_line(qemu, console, rf"diskprobe: {match[1]} is {VOLUME_SERIAL}, {96 * MiB} bytes",
                  mark)  # fmt: skip
        wait_line(qemu, console, rf"diskprobe: {match[1]} holds LAMINA-PATTERN from vm-a", mark)
        power_off(qemu, monitor, console)
        monitor.close()
    finally:
        stop(qemu)
    text = console.read_text(errors="replace")
    print(text)
    assert not any(re.match(r"diskprobe: \w+ wrote", line) for line in guest_lines(text)), text
    with volume.open("rb") as f:
        assert f.read(26) == b"LAMINA-PATTERN from vm-a\n\0"


def test_a_volume_attached_before_boot_is_probed(channel: Channel, tmp_path: Path) -> None:
    """A volume attached while the instance was stopped is there at boot: announced once as
    present (the initramfs' own disks are not), probed, and it can still be unplugged."""
    volume = tmp_path / "volume.img"
    with volume.open("wb") as f:
        f.truncate(64 * MiB)
    disks = probe_disks(channel, make_upper(tmp_path / "c.img"), "vm-c")
    disks.append(Disk(VOLUME_SERIAL, volume, False))
    console = tmp_path / "console.log"
    qemu = start(channel, ["l0", "l1"], disks, console,
                 "-qmp", f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off")  # fmt: skip
    try:
        assert_ready(wait_ready(qemu, console))
        present = rf"lamina-base: disk (vd[a-z]+) present: serial {VOLUME_SERIAL}, {64 * MiB} bytes"
        match = re.fullmatch(present, wait_line(qemu, console, present))
        assert match
        wait_line(qemu, console, rf"diskprobe: {match[1]} wrote LAMINA-PATTERN from vm-c")
        monitor = Qmp(tmp_path / "qmp.sock")
        unplug(monitor, f"disk{len(disks) - 1}")
        wait_line(qemu, console, rf"lamina-base: disk {match[1]} gone")
        power_off(qemu, monitor, console)
        monitor.close()
    finally:
        stop(qemu)
    text = console.read_text(errors="replace")
    assert [line for line in guest_lines(text) if line.startswith("lamina-base: disk")] == [
        f"lamina-base: disk {match[1]} present: serial {VOLUME_SERIAL}, {64 * MiB} bytes",
        f"lamina-base: disk {match[1]} gone",
    ], text
    with volume.open("rb") as f:
        assert f.read(25) == b"LAMINA-PATTERN from vm-c\n"
