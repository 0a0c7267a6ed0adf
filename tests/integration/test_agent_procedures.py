"""STORM's procedure set, through a real agent over mutual TLS.

The agent is ``create_agent_app(Agent(root, hypervisor))`` served by uvicorn exactly as
``run_agent`` serves it (its certificate from the manager's CA, ``CERT_REQUIRED``), on a
free port of 127.0.0.1, driving libvirt's ``test:///default`` and real ``qemu-img``. The
manager side is ``AgentPool(CertificateAuthority(<manager data dir>/ca).client_files())``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from agent_server import serve_agent
from harness import slow_mirror, wait_until

from lamina import __version__
from lamina.agent.server import Agent
from lamina.errors import Conflict, Forbidden, InvalidRequest, InvalidState, LaminaError, NotFound
from lamina.identity.ca import CertificateAuthority
from lamina.wire.client import AgentClient
from lamina.wire.pool import AgentPool
from lamina.wire.protocol import (
    PROCEDURES,
    DiskCreate,
    GuestCapture,
    GuestDefinition,
    GuestDisk,
)
from lamina.wire.tls import client_context

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@dataclass
class Served:
    agent: Agent
    client: AgentClient
    #: Plain mutual-TLS HTTP, for requests the typed client would not let through.
    raw: httpx.Client
    address: str
    pool: AgentPool
    ca: CertificateAuthority


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_agent(tmp_path_factory.mktemp("agent")) as served:
        pool = AgentPool(served.ca.client_files())
        raw = httpx.Client(
            base_url=f"https://{served.address}",
            verify=client_context(served.ca.client_files()),
            timeout=30,
        )
        try:
            client = pool.for_address(served.address)
            yield Served(served.agent, client, raw, served.address, pool, served.ca)
        finally:
            raw.close()
            pool.close()


@pytest.fixture
def guest_name(served: Served) -> Iterator[str]:
    """A unique guest name, undefined (and its files removed) after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    served.client.undefine(name)


def make_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def cache_files(served: Served) -> set[str]:
    return {p.name for p in (served.agent.root / "cache").iterdir() if p.name != "sources.json"}


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = dict(response.json())
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"code", "message", "details"}
    return body


# -- server info, disk space, uptime -----------------------------------------------------


def test_server_info(served: Served) -> None:
    info = served.client.info()
    assert info.version == __version__
    assert info.capabilities == list(PROCEDURES)
    for procedure in ("server_info", "get_diskspace_used", "get_virt_uptime"):
        assert procedure in info.capabilities
    assert info.domain_type == "test" and info.kvm is False
    assert info.vcpus > 0 and info.memory_mib > 0
    first = info.uptime_seconds
    wait_until(lambda: served.client.info().uptime_seconds > first, 5, "the uptime to grow")


def test_disk_space_counts_the_cache(served: Served, tmp_path: Path) -> None:
    before = served.client.disk_usage()
    assert before.free_bytes > 0 and before.total_bytes >= before.free_bytes
    digest = make_file(tmp_path / "image", 2 * MiB)
    served.client.cache_install(str(tmp_path / "image"))
    try:
        during = served.client.disk_usage()
        assert during.used_bytes >= before.used_bytes + 2 * MiB
    finally:
        served.client.cache_remove(digest)
    assert served.client.disk_usage().used_bytes == before.used_bytes


def test_guest_uptime(served: Served, guest_name: str) -> None:
    client = served.client
    client.define(guest_name, GuestDefinition(vcpus=1, memory_mib=64))
    assert client.guest(guest_name).uptime_seconds is None
    client.act(guest_name, "start")
    first = client.guest(guest_name).uptime_seconds
    assert first is not None and first > 0
    wait_until(lambda: client.guest(guest_name).uptime_seconds > first, 5, "uptime to grow")
    assert guest_name in {g.name for g in client.guests()}
    client.act(guest_name, "stop")
    stopped = client.guest(guest_name)
    assert stopped.state == "stopped" and stopped.uptime_seconds is None


# -- download progress and speed ---------------------------------------------------------


def test_downloads_idle(served: Served) -> None:
    idle = served.client.downloads()
    assert (idle.progress, idle.speed_kbps, idle.active) == (-1, -1, [])


def test_download_progress_and_speed_of_a_slow_fetch(served: Served) -> None:
    body = os.urandom(3 * MiB)
    digest = hashlib.sha256(body).hexdigest()
    mirror = slow_mirror(body, 1.5 * MiB)
    url = mirror.__enter__()  # left in the finally below, with the pool
    results: list[object] = []
    # Another connection, as the manager's job runner and its monitor would use.
    installer_pool = AgentPool(served.ca.client_files())
    installer = installer_pool.for_address(served.address)
    fetch = threading.Thread(target=lambda: results.append(_install(installer, url)))
    try:
        fetch.start()
        seen = wait_until(
            lambda: (s := served.client.downloads()).speed_kbps > 0 and s, 10, "a measured speed"
        )
        assert 0 <= seen.progress < 1
        assert seen.active == [url]
        assert seen.speed_kbps < 10 * 1024  # about 1.5 MiB/s, certainly under 10
        fetch.join(30)
        assert not fetch.is_alive()
    finally:
        installer_pool.close()
        mirror.__exit__(None, None, None)
    entry = results[0]
    assert not isinstance(entry, BaseException), entry
    assert getattr(entry, "sha256", None) == digest
    idle = served.client.downloads()
    assert (idle.progress, idle.speed_kbps, idle.active) == (-1, -1, [])
    served.client.cache_remove(digest)


def _install(client: AgentClient, url: str) -> object:
    try:
        return client.cache_install(url)
    except LaminaError as exc:
        return exc


# -- the image cache ---------------------------------------------------------------------


def test_cache_install_from_path_and_file_url(served: Served, tmp_path: Path) -> None:
    client = served.client
    source = tmp_path / "kernel"
    digest = make_file(source, 300 * 1024)
    with pytest.raises(NotFound) as missing:
        client.cache_check(digest)
    assert missing.value.status == 404 and missing.value.code == "not_found"

    entry = client.cache_install(str(source))
    assert (entry.sha256, entry.size) == (digest, 300 * 1024)
    assert client.cache_check(digest) == entry
    assert hashlib.sha256(Path(entry.path).read_bytes()).hexdigest() == digest
    stored = os.stat(entry.path)

    # The same unchanged source again: answered from the cache, not copied again.
    assert client.cache_install(str(source)) == entry
    again = os.stat(entry.path)
    assert (again.st_ino, again.st_mtime_ns) == (stored.st_ino, stored.st_mtime_ns)

    # A changed file under the same path is fetched again.
    changed = make_file(source, 1000)
    assert client.cache_install(str(source)).sha256 == changed

    other = tmp_path / "initrd with space"
    other_digest = make_file(other, 4096)
    by_url = client.cache_install(other.as_uri(), sha256=other_digest)
    assert by_url.sha256 == other_digest and by_url.size == 4096

    for d in (digest, changed, other_digest):
        client.cache_remove(d)
        with pytest.raises(NotFound):
            client.cache_check(d)


def test_cache_install_with_wrong_digest_leaves_nothing(served: Served, tmp_path: Path) -> None:
    client = served.client
    source = tmp_path / "image"
    digest = make_file(source, 200 * 1024)
    before = cache_files(served)
    with pytest.raises(Conflict) as wrong:
        client.cache_install(str(source), sha256="0" * 64)
    assert wrong.value.status == 409 and digest in wrong.value.message
    assert cache_files(served) == before  # neither the image nor a partial file
    with pytest.raises(NotFound):
        client.cache_check(digest)


def test_cache_install_with_wrong_digest_keeps_an_entry_already_there(
    served: Served, tmp_path: Path
) -> None:
    # The same bytes are cached already (say, as a guest disk's backing image); a bad
    # install of a copy of them must not delete that entry.
    client = served.client
    digest = make_file(tmp_path / "base", 100 * 1024)
    (tmp_path / "copy").write_bytes((tmp_path / "base").read_bytes())
    kept = client.cache_install(str(tmp_path / "base"))
    try:
        with pytest.raises(Conflict):
            client.cache_install(str(tmp_path / "copy"), sha256="1" * 64)
        assert client.cache_check(digest) == kept
    finally:
        client.cache_remove(digest)


def test_cache_refuses_bad_sources_and_digests(served: Served) -> None:
    with pytest.raises(InvalidRequest, match="absolute path or a URL"):
        served.client.cache_install("relative/image")
    with pytest.raises(Forbidden) as refused:
        served.client.cache_install("/nonexistent/image")
    assert refused.value.code == "path_forbidden"
    assert_envelope(served.raw.get("/cache/not-a-digest"), 400, "invalid_request")
    assert_envelope(
        served.raw.post("/cache", json={"source": "/x", "sha256": "zz"}), 400, "invalid_request"
    )


# -- guest disks -------------------------------------------------------------------------


def qemu_img_info(path: str) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", path],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return dict(json.loads(out.stdout))


def test_disk_create_and_remove(served: Served, guest_name: str, tmp_path: Path) -> None:
    client = served.client
    disk = client.disk_create(DiskCreate(guest=guest_name, name="data", size_bytes=8 * MiB))
    assert (disk.format, disk.size_bytes) == ("qcow2", 8 * MiB)
    assert Path(disk.path) == served.agent.root / "guests" / guest_name / "data.img"
    assert qemu_img_info(disk.path)["format"] == "qcow2"
    # Creating it again finds it done.
    assert client.disk_create(DiskCreate(guest=guest_name, name="data", size_bytes=8 * MiB)) == disk

    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    base_entry = client.cache_install(str(base))
    try:
        root = client.disk_create(
            DiskCreate(guest=guest_name, name="root", backing=base_entry.sha256)
        )
        assert (root.format, root.size_bytes) == ("qcow2", 16 * MiB)
        info = qemu_img_info(root.path)
        assert info["backing-filename"] == base_entry.path
        assert info["backing-filename-format"] == "qcow2"
        grown = client.disk_create(
            DiskCreate(guest=guest_name, name="big", size_bytes=32 * MiB, backing=base_entry.sha256)
        )
        assert grown.size_bytes == 32 * MiB

        for name in ("data", "root", "big"):
            client.disk_remove(guest_name, name)
            assert not (served.agent.root / "guests" / guest_name / f"{name}.img").exists()
        client.disk_remove(guest_name, "data")  # removing a removed disk is fine
    finally:
        client.cache_remove(base_entry.sha256)


def test_disk_create_refusals(served: Served, guest_name: str) -> None:
    client = served.client
    with pytest.raises(NotFound):
        client.disk_create(DiskCreate(guest=guest_name, name="root", backing="a" * 64))
    with pytest.raises(InvalidRequest, match="needs a size"):
        client.disk_create(DiskCreate(guest=guest_name, name="root"))
    for body in (
        {"guest": guest_name, "name": "../../etc/passwd", "size_bytes": MiB},
        {"guest": guest_name, "name": "Bad Name", "size_bytes": MiB},
        {"guest": "..", "name": "root", "size_bytes": MiB},
        {"guest": "../escape", "name": "root", "size_bytes": MiB},
        {"guest": guest_name, "name": "root", "size_bytes": -1},
        {"guest": guest_name, "name": "root", "size_bytes": MiB, "format": "vmdk"},
    ):
        assert_envelope(served.raw.post("/disks", json=body), 400, "invalid_request")
    assert not (served.agent.root / "escape").exists()
    assert not (served.agent.root / "guests" / guest_name).exists()


def test_guest_names_cannot_leave_the_guests_directory(served: Served) -> None:
    spec = {"vcpus": 1, "memory_mib": 64}
    for name in ("%2E%2E", "%2E"):
        assert_envelope(served.raw.put(f"/guests/{name}", json=spec), 400, "invalid_request")
        assert_envelope(served.raw.delete(f"/guests/{name}"), 400, "invalid_request")
    # A name with a slash matches no route at all.
    assert served.raw.put("/guests/..%2Fescape", json=spec).status_code in (404, 405)
    assert sorted(p.name for p in served.agent.root.iterdir()) == [
        "cache",
        "guests",
        "tls",
        "volume-meta",
        "volumes",
    ]


# -- guest lifecycle and console ---------------------------------------------------------


def test_guest_lifecycle(served: Served, guest_name: str) -> None:
    client = served.client
    client.disk_create(DiskCreate(guest=guest_name, name="root", size_bytes=4 * MiB))
    spec = GuestDefinition(vcpus=2, memory_mib=128, disks=[GuestDisk(name="root")])
    defined = client.define(guest_name, spec)
    assert (defined.state, defined.vcpus, defined.memory_mib) == ("stopped", 2, 128)

    with pytest.raises(InvalidState) as stopped_pause:
        client.act(guest_name, "pause")
    assert stopped_pause.value.status == 409

    steps = [
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
        ("reboot", "running"),
        ("stop", "stopped"),
        ("start", "running"),
        ("destroy", "stopped"),
    ]
    for action, state in steps:
        assert client.act(guest_name, action).state == state, action
        assert client.guest(guest_name).state == state

    with pytest.raises(InvalidRequest, match="has not been created"):
        client.define(
            guest_name, GuestDefinition(vcpus=1, memory_mib=64, disks=[GuestDisk(name="nope")])
        )

    client.undefine(guest_name)
    with pytest.raises(NotFound) as gone:
        client.guest(guest_name)
    assert gone.value.code == "guest_not_found"
    assert not (served.agent.root / "guests" / guest_name).exists()
    client.undefine(guest_name)  # undefining an unknown guest is fine


def test_guest_console(served: Served, guest_name: str) -> None:
    client = served.client
    client.define(guest_name, GuestDefinition(vcpus=1, memory_mib=64))
    client.act(guest_name, "start")
    assert client.console(guest_name) == client.console(guest_name, 0)
    assert client.console(guest_name).offset == 0
    # The test driver has no serial port; write the log the hypervisor would.
    log = served.agent.root / "guests" / guest_name / "console.log"
    text = "Booting Lamina appliance\nlogin: é\n"
    log.write_bytes(text.encode())
    whole = client.console(guest_name)
    assert (whole.data, whole.offset) == (text, len(text.encode()))
    tail = client.console(guest_name, len("Booting Lamina appliance\n"))
    assert tail.data == "login: é\n" and tail.offset == whole.offset
    end = client.console(guest_name, whole.offset)
    assert (end.data, end.offset) == ("", whole.offset)
    # A fresh boot starts a fresh log; the previous one is kept aside.
    client.act(guest_name, "stop")
    client.act(guest_name, "start")
    assert client.console(guest_name).data == ""
    assert log.with_suffix(".log.0").read_text() == text
    with pytest.raises(NotFound):
        client.console(f"{guest_name}-unknown")


def test_error_envelopes(served: Served, guest_name: str) -> None:
    raw = served.raw
    body = assert_envelope(raw.get(f"/guests/{guest_name}"), 404, "guest_not_found")
    assert guest_name in str(body["message"])
    assert_envelope(raw.get(f"/guests/{guest_name}/console"), 404, "guest_not_found")
    assert_envelope(raw.get(f"/cache/{'b' * 64}"), 404, "not_found")
    assert_envelope(raw.post(f"/guests/{guest_name}/explode"), 400, "invalid_request")
    assert_envelope(
        raw.put(f"/guests/{guest_name}", json={"vcpus": 0, "memory_mib": 64}),
        400,
        "invalid_request",
    )
    assert_envelope(
        raw.put(f"/guests/{guest_name}", json={"vcpus": 1, "memory_mib": 64, "surprise": 1}),
        400,
        "invalid_request",
    )
    assert_envelope(
        raw.get(f"/guests/{guest_name}/console", params={"offset": -1}), 400, "invalid_request"
    )
    assert_envelope(raw.get("/no/such/route"), 404, "not_found")
    served.client.define(guest_name, GuestDefinition(vcpus=1, memory_mib=64))
    assert_envelope(raw.post(f"/guests/{guest_name}/resume"), 409, "invalid_state")
    served.client.act(guest_name, "start")
    redefine = raw.put(f"/guests/{guest_name}", json={"vcpus": 1, "memory_mib": 64})
    assert_envelope(redefine, 409, "invalid_state")


# -- layered guests: instance layer, config disk, shared layers, capture -----------------


def test_layered_disks_define_and_capture(served: Served, guest_name: str, tmp_path: Path) -> None:
    client = served.client
    upper = client.disk_create(
        DiskCreate(guest=guest_name, name="upper", size_bytes=64 * MiB, format="raw",
                   filesystem="ext4")
    )  # fmt: skip
    kind = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", upper.path], capture_output=True)
    assert kind.stdout.strip() == b"ext4"
    config = client.disk_create(
        DiskCreate(guest=guest_name, name="config", format="raw",
                   files={"variables": "domain\texample.org\n", "hostname": "web1\n"})
    )  # fmt: skip
    with tarfile.open(config.path) as tar:
        assert sorted(tar.getnames()) == ["hostname", "variables"]
        assert tar.extractfile("variables").read() == b"domain\texample.org\n"  # type: ignore[union-attr]
    assert Path(config.path).stat().st_size % 512 == 0
    for bad in (
        {"guest": guest_name, "name": "c2", "format": "raw", "files": {"../x": "y"}},
        {"guest": guest_name, "name": "c2", "format": "qcow2", "files": {"x": "y"}},
        {"guest": guest_name, "name": "u2", "format": "qcow2", "size_bytes": MiB,
         "filesystem": "ext4"},
    ):  # fmt: skip
        assert_envelope(served.raw.post("/disks", json=bad), 400, "invalid_request")

    layer_source = tmp_path / "layer"
    (layer_source / "etc").mkdir(parents=True)
    (layer_source / "etc" / "release").write_text("base 1\n")
    image = tmp_path / "layer.squashfs"
    subprocess.run(["mksquashfs", str(layer_source), str(image), "-quiet", "-no-progress"],
                   check=True)  # fmt: skip
    layer = client.cache_install(str(image))
    spec = GuestDefinition(
        vcpus=1,
        memory_mib=64,
        disks=[
            GuestDisk(name="l0", layer=layer.sha256, serial="l0"),
            GuestDisk(name="upper", format="raw", serial="upper"),
            GuestDisk(name="config", format="raw", readonly=True, serial="config"),
        ],
    )
    assert client.define(guest_name, spec).state == "stopped"
    xml = served.agent.hypervisor._connection().lookupByName(guest_name).XMLDesc(0)  # type: ignore[attr-defined]
    assert f"<source file='{layer.path}'/>" in xml and "<serial>l0</serial>" in xml

    # What an instance wrote in its overlay's upper folder: a file, noise, a whiteout.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", upper.path, str(mnt)], check=True)
    try:
        (mnt / "data" / "etc").mkdir(parents=True)
        (mnt / "data" / "etc" / "site.conf").write_text("configured\n")
        (mnt / "data" / "var" / "log").mkdir(parents=True)
        (mnt / "data" / "var" / "log" / "messages").write_text("noise\n")
        os.mknod(mnt / "data" / "etc" / "release", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    finally:
        subprocess.run(["umount", "-d", str(mnt)], check=True)
    captured = client.capture(guest_name, GuestCapture(exclude=["/var/log"]))
    listing = subprocess.run(["unsquashfs", "-lls", captured.path], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert "squashfs-root/etc/site.conf" in listing and "var/log" not in listing
    assert re.search(r"^c.* 0,\s+0 .*squashfs-root/etc/release$", listing, re.M), listing
    out = tmp_path / "copy"
    with out.open("wb") as sink:
        assert client.cache_read(captured.sha256, sink) == captured.size
    assert hashlib.sha256(out.read_bytes()).hexdigest() == captured.sha256
    for escape in (["/"], ["../etc"]):
        with pytest.raises(InvalidRequest):
            client.capture(guest_name, GuestCapture(exclude=escape))

    client.act(guest_name, "start")
    with pytest.raises(InvalidState, match="stop it"):
        client.capture(guest_name, GuestCapture())
    client.act(guest_name, "destroy")
    client.cache_remove(layer.sha256)
    client.cache_remove(captured.sha256)
