"""An attached volume through a live migration over TLS: h1 is the volume server (its own tgtd,
portal on its address), a ``diskprobe`` guest writes its pattern on the volume, moves live to
the other host (libvirt and QEMU authenticated by the hosts' migration certificates:
``migration.transport = "tls"``, the default), and reads the pattern back there through that
host's iSCSI initiator. Skipped until the migrate branch is merged."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import ROOT, Cloud, wait_until
from test_layered_appliances import Channel

from lamina.client import Client
from lamina.launcher.nshosts import Lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not hasattr(Client, "migrate_instance"), reason="the migrate branch is not merged"
    ),
]
MiB = 1024 * 1024
BOOT = 180


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channel]:
    root = tmp_path_factory.mktemp("sample-channel")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-channel.sh"), str(root)], check=True)
    served = Channel(root)
    yield served
    served.server.stop()


def _done(client: Client, answer: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    job = client.wait_job((answer.get("job") or answer)["id"], timeout=timeout)
    assert job["status"] == "succeeded", job
    return job


def _wait_line(client: Client, name: str, pattern: str) -> re.Match[str]:
    def found() -> re.Match[str] | None:
        return re.search(pattern, str(client.console(name)["data"]))

    match: re.Match[str] = wait_until(found, BOOT, f"{pattern!r} on {name}'s console")
    return match


def test_an_attached_volume_is_read_on_the_host_its_guest_moved_to(
    lab: Lab, lab_cloud: Callable[..., Cloud], channel: Channel
) -> None:
    cloud = lab_cloud(hosts=("h1", "h2"), tls=True, volume_server="h1")
    client = cloud.client()
    client.add_channel(channel.url, channel.token)
    _done(client, client.install_appliance("diskprobe"))
    _done(client, client.deploy_appliance("diskprobe", "probe", memory_mib=160))
    home = client.instance("probe")["host"]
    away = {"h1": "h2", "h2": "h1"}[home]
    made = client.create_volume(size_bytes=32 * MiB, comment="moves with its guest")
    _done(client, made)
    vol = made["volume"]["id"]
    try:
        _wait_line(client, "probe", "lamina-base: ready")
        _done(client, client.attach_volume(vol, "probe"))
        wrote = _wait_line(client, "probe", r"diskprobe: (vd[a-z]) wrote LAMINA-PATTERN from probe")

        job = _done(client, client.migrate_instance("probe", away, "live"), timeout=600)
        assert job["result"]["host"] == away and job["result"]["mode"] == "live", job
        assert client.instance("probe")["host"] == away
        assert client.volume(vol)["status"] == "in-use"
        name = f"lamina-{client.instance('probe')['id']}"
        assert lab.hosts[home].virsh("list", "--all", "--name").split() == []
        defined = lab.hosts[away].virsh("dumpxml", name)
        assert f"<host name='{lab.hosts['h1'].address}' port='3260'/>" in defined, defined
        targets = lab.hosts["h1"].run(
            "tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"
        )
        assert lab.hosts[away].address in targets, targets

        # Read back on the new host: detached and attached again, the guest finds it (once
        # its probe, polling every second, has seen it gone).
        _done(client, client.detach_volume(vol))
        _wait_line(client, "probe", rf"lamina-base: disk {wrote[1]} gone")
        time.sleep(2)
        _done(client, client.attach_volume(vol, "probe"))
        _wait_line(client, "probe", r"diskprobe: vd[a-z] holds LAMINA-PATTERN from probe")
        _done(client, client.detach_volume(vol))
    finally:
        if client.volume(vol)["status"] == "in-use":
            client.wait_job(client.detach_volume(vol)["job"]["id"], timeout=120)
        client.wait_job(client.delete_volume(vol)["job"]["id"], timeout=120)
