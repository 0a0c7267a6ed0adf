"""A volume used by guests on two namespace hosts: h1 is the volume server, with a tgtd of its
own (its private /run/tgtd, its iSCSI portal on its address); h2's agent has no volumes. A
``diskprobe`` guest on the host that is not the volume server writes a pattern on the volume
through QEMU's iSCSI initiator, across the data-centre bridge; after detach, a guest on the
volume server reads it back."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import ROOT, Cloud, wait_until
from test_layered_appliances import Channel

from lamina.client import Client
from lamina.launcher.nshosts import Lab

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
BOOT = 180


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channel]:
    root = tmp_path_factory.mktemp("sample-channel")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-channel.sh"), str(root)], check=True)
    served = Channel(root)
    yield served
    served.server.stop()


def _done(client: Client, answer: dict[str, Any], timeout: float = 300) -> None:
    job = client.wait_job(answer["job"]["id"], timeout=timeout)
    assert job["status"] == "succeeded", job


def _wait_line(client: Client, name: str, pattern: str) -> re.Match[str]:
    def found() -> re.Match[str] | None:
        return re.search(pattern, str(client.console(name)["data"]))

    match: re.Match[str] = wait_until(found, BOOT, f"{pattern!r} on {name}'s console")
    return match


def test_a_volume_of_one_host_is_written_from_another(
    lab: Lab, lab_cloud: Callable[..., Cloud], channel: Channel
) -> None:
    cloud = lab_cloud(hosts=("h1", "h2"), volume_server="h1")
    h1 = lab.hosts["h1"]
    client = cloud.client()
    client.add_channel(channel.url, channel.token)
    _done(client, client.install_appliance("diskprobe"))
    # The scheduler puts each on the roomier host: one guest per host.
    for name in ("probe-a", "probe-b"):
        _done(client, client.deploy_appliance("diskprobe", name, memory_mib=160))
    where = {client.instance(n)["host"]: n for n in ("probe-a", "probe-b")}
    assert set(where) == {"h1", "h2"}, where
    far, near = where["h2"], where["h1"]

    made = client.create_volume(size_bytes=32 * MiB, comment="across hosts")
    _done(client, made)
    vol = made["volume"]["id"]
    try:
        assert client.volume(vol)["host"] == "h1"
        for name in (far, near):
            _wait_line(client, name, "lamina-base: ready")

        # The guest on h2 writes through h2's QEMU, logged in to h1's portal.
        _done(client, client.attach_volume(vol, far))
        wrote = _wait_line(client, far, rf"diskprobe: (vd[a-z]) wrote LAMINA-PATTERN from {far}")
        defined = lab.hosts["h2"].virsh("dumpxml", f"lamina-{client.instance(far)['id']}")
        assert f"<host name='{h1.address}' port='3260'/>" in defined, defined
        # Exported by h1's own tgtd (its private control socket), h2's initiator let in.
        targets = h1.run("tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show")
        assert vol in targets and lab.hosts["h2"].address in targets, targets
        _done(client, client.detach_volume(vol))
        _wait_line(client, far, rf"lamina-base: disk {wrote[1]} gone")

        # The guest on h1 reads it back.
        _done(client, client.attach_volume(vol, near))
        _wait_line(client, near, rf"diskprobe: vd[a-z] holds LAMINA-PATTERN from {far}")
        _done(client, client.detach_volume(vol))
    finally:
        if client.volume(vol)["status"] == "in-use":
            client.wait_job(client.detach_volume(vol)["job"]["id"], timeout=120)
        client.wait_job(client.delete_volume(vol)["job"]["id"], timeout=120)
