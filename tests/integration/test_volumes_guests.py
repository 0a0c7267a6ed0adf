"""Block volumes used by real guests: two instances of the sample channel's ``diskprobe``
appliance under QEMU, a volume exported by the host's volume server over iSCSI (tgt) and
hot-plugged into them through libvirt. From inside the guests (their consoles): the first
writes a pattern, the second reads it back after detach and attach; a snapshot of the volume
becomes a new volume with the same data; an extended volume shows its new size when attached
again."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clouds import add_host
from harness import ROOT, Cloud, wait_until
from test_layered_appliances import Channel

from lamina.client import Client

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
BOOT = 120


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channel]:
    root = tmp_path_factory.mktemp("sample-channel")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-channel.sh"), str(root)], check=True)
    subprocess.run(["bash", str(ROOT / "scripts/start-tgtd.sh")], check=True)
    served = Channel(root)
    yield served
    served.server.stop()


def _done(client: Client, answer: dict[str, Any]) -> None:
    job = client.wait_job(answer["job"]["id"], timeout=300)
    assert job["status"] == "succeeded", job


def _console(client: Client, name: str) -> str:
    return str(client.console(name)["data"])


def _wait_line(client: Client, name: str, pattern: str) -> re.Match[str]:
    def found() -> re.Match[str] | None:
        return re.search(pattern, _console(client, name))

    match: re.Match[str] = wait_until(found, BOOT, f"{pattern!r} on {name}'s console")
    return match


def test_a_volume_moves_between_real_guests(
    make_cloud: Callable[..., Cloud], channel: Channel
) -> None:
    cloud = make_cloud()
    cloud.start_manager()
    add_host(cloud, "qemu", uri="qemu:///system")
    client = cloud.client()
    client.add_channel(channel.url, channel.token)
    _done(client, client.install_appliance("diskprobe"))
    for name in ("probe-a", "probe-b"):
        _done(client, client.deploy_appliance("diskprobe", name))
    volumes: list[str] = []
    try:
        for name in ("probe-a", "probe-b"):
            _wait_line(client, name, "lamina-base: ready")

        made = client.create_volume(size_bytes=64 * MiB, comment="moves between guests")
        _done(client, made)
        vol = made["volume"]["id"]
        volumes.append(vol)
        assert client.volume(vol)["status"] == "available"

        # probe-a: a fresh volume appears and the guest writes its pattern on it.
        _done(client, client.attach_volume(vol, "probe-a"))
        assert client.volume(vol)["status"] == "in-use"
        wrote = _wait_line(
            client, "probe-a", r"diskprobe: (vd[a-z]) wrote LAMINA-PATTERN from probe-a"
        )
        refused = cloud.http.put(f"/volumes/{vol}/attachment", json={"instance": "probe-b"})
        assert refused.status_code == 409 and "probe-a" in refused.json()["message"]
        _done(client, client.detach_volume(vol))
        _wait_line(client, "probe-a", rf"lamina-base: disk {wrote[1]} gone")
        assert client.volume(vol)["status"] == "available"

        # probe-b reads what probe-a wrote.
        _done(client, client.attach_volume(vol, "probe-b"))
        _wait_line(client, "probe-b", r"diskprobe: vd[a-z] holds LAMINA-PATTERN from probe-a")
        _done(client, client.detach_volume(vol))

        # A snapshot becomes a new volume with the same data.
        snap = client.create_snapshot(vol, comment="after probe-a")
        _done(client, snap)
        snap_id = snap["snapshot"]["id"]
        assert client.snapshot(snap_id)["status"] == "completed"
        copy = client.create_volume(snapshot=snap_id)
        _done(client, copy)
        copy_id = copy["volume"]["id"]
        volumes.append(copy_id)
        _done(client, client.attach_volume(copy_id, "probe-a"))
        _wait_line(client, "probe-a", rf"diskprobe: vd[a-z] is {copy_id}, {64 * MiB} bytes")
        _wait_line(client, "probe-a", r"diskprobe: vd[a-z] holds LAMINA-PATTERN from probe-a\n")
        _done(client, client.detach_volume(copy_id))

        # Extended while detached: the guest sees the new size at the next attach.
        _done(client, client.extend_volume(vol, 128 * MiB))
        _done(client, client.attach_volume(vol, "probe-b"))
        _wait_line(client, "probe-b", rf"diskprobe: vd[a-z] is {vol}, {128 * MiB} bytes")
        _done(client, client.detach_volume(vol))
    finally:
        for vol in volumes:
            if client.volume(vol)["status"] == "in-use":
                client.wait_job(client.detach_volume(vol)["job"]["id"], timeout=120)
            client.wait_job(client.delete_volume(vol)["job"]["id"], timeout=120)
        for snap in client.snapshots():
            client.wait_job(client.delete_snapshot(snap["id"])["job"]["id"], timeout=120)
        for vm in client.instances():
            client.wait_job(client.delete_instance(vm["id"])["id"], timeout=120)
