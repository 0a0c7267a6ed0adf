"""Volumes and snapshots through the REST API → manager → agents (mutual TLS): the volume
server's command patterns and tgt exports, and disks attached to guests on libvirt's test
driver. Also a manager killed between the steps of an attach."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from clouds import add_host
from harness import Cloud, Proc, wait_until

from lamina.client import Client
from lamina.errors import Conflict, InvalidRequest, InvalidState
from lamina.identity.ca import CertificateAuthority
from lamina.wire.client import AgentClient
from lamina.wire.pool import AgentPool

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("boot") / "vmlinuz"
    path.write_bytes(b"not really a kernel" * 1000)
    return str(path)


@pytest.fixture
def agents(cloud: Cloud) -> Iterator[Callable[[str], AgentClient]]:
    """The agent of a host, as the manager reaches it (its client certificate)."""
    pool = AgentPool(cloud_ca(cloud).client_files())
    client = cloud.client()

    def agent(host: str) -> AgentClient:
        return pool.for_address(client.host(host)["address"])

    yield agent
    pool.close()


def finished(client: Client, result: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    job = client.wait_job(result["job"]["id"], timeout=timeout)
    assert job["status"] == "succeeded", job
    return job


def instance(client: Client, name: str, kernel: str, **fields: Any) -> dict[str, Any]:
    result = client.create_instance(name=name, kernel=kernel, memory_mib=64, **fields)
    finished(client, {"job": result["job"]}, 60)
    return client.instance(result["instance"]["id"])


def new_volume(client: Client, **fields: Any) -> dict[str, Any]:
    result = client.create_volume(**fields)
    assert result["volume"]["status"] == "creating" and result["job"]["kind"] == "volume.create"
    finished(client, result)
    return client.volume(result["volume"]["id"])


def test_volume_lifecycle(
    cloud: Cloud, client: Client, kernel: str, agents: Callable[[str], AgentClient]
) -> None:
    web = instance(client, "web", kernel)
    instance(client, "db", kernel)
    server = agents("h1")

    vol = new_volume(client, size_bytes=64 * MiB, comment="data")
    assert (vol["status"], vol["host"], vol["size_bytes"], vol["comment"]) == (
        "available",
        "h1",
        64 * MiB,
        "data",
    )
    assert vol["id"].startswith("vol-") and vol["backend"] and vol["export_format"]
    other = new_volume(client, size_bytes=32 * MiB)

    # describe with filters
    assert {v["id"] for v in client.volumes()} == {vol["id"], other["id"]}
    assert [v["id"] for v in client.volumes(ids=[other["id"]])] == [other["id"]]
    assert [v["id"] for v in client.volumes(status="in-use")] == []

    # attach: exported to the instance's host only, attached with the volume id as serial
    result = client.attach_volume(vol["id"], "web")
    assert result["volume"]["status"] == "attaching"
    job = finished(client, result)
    assert [s["name"] for s in job["steps"]] == ["export", "attach", "record"]
    vol = client.volume(vol["id"])
    assert vol["status"] == "in-use"
    assert vol["attachment"]["instance"] == web["id"] and vol["attachment"]["device"] == "vdb"
    [export] = [e for e in server.export_list() if e.volume == vol["id"]]
    assert export.initiator_address == "127.0.0.1" and export.iqn == vol["attachment"]["iqn"]
    disks = {d.target: d for d in server.guest_disks(f"lamina-{web['id']}")}
    assert "vdb" in disks
    assert [v["id"] for v in client.volumes(instance="web")] == [vol["id"]]
    assert [v["id"] for v in client.volumes(status="in-use")] == [vol["id"]]

    # a second attach, a delete and an extend are refused, naming the state and instance
    with pytest.raises((Conflict, InvalidState), match="attached to instance 'web'"):
        client.attach_volume(vol["id"], "db")
    with pytest.raises(InvalidState, match="it is in-use"):
        client.delete_volume(vol["id"])
    with pytest.raises(InvalidState, match="it is in-use"):
        client.extend_volume(vol["id"], 128 * MiB)
    with pytest.raises(Conflict):
        client.attach_volume(other["id"], "web", "vdb")  # the device is taken

    # a snapshot of the attached volume
    snap = client.create_snapshot(vol["id"], "before")
    assert snap["snapshot"]["status"] == "pending"
    finished(client, snap)
    snap = client.snapshot(snap["snapshot"]["id"])
    assert (snap["status"], snap["volume"], snap["comment"]) == ("completed", vol["id"], "before")

    # detach: the target is gone, the guest's disk too
    finished(client, client.detach_volume(vol["id"]))
    vol = client.volume(vol["id"])
    assert vol["status"] == "available" and vol["attachment"] is None
    assert [e for e in server.export_list() if e.volume == vol["id"]] == []
    assert "vdb" not in {d.target for d in server.guest_disks(f"lamina-{web['id']}")}
    with pytest.raises(InvalidState, match="it is available"):
        client.detach_volume(vol["id"])

    # extend, only bigger
    with pytest.raises(InvalidRequest, match="bigger"):
        client.extend_volume(vol["id"], 32 * MiB)
    finished(client, client.extend_volume(vol["id"], 128 * MiB))
    assert client.volume(vol["id"])["size_bytes"] == 128 * MiB

    # volumes from the snapshot: a copy-on-write clone and a full copy
    clone = new_volume(client, snapshot=snap["id"])
    copy = new_volume(client, snapshot=snap["id"], clone=False, size_bytes=96 * MiB)
    assert clone["snapshot"] == snap["id"] and clone["size_bytes"] == 64 * MiB
    assert copy["cloned_from"] is None and copy["size_bytes"] == 96 * MiB
    if clone["cloned_from"]:
        with pytest.raises(InvalidState, match="copy-on-write"):
            client.delete_snapshot(snap["id"])

    # the copy attaches to another instance
    finished(client, client.attach_volume(copy["id"], "db", "vdc"))
    assert client.volume(copy["id"])["attachment"]["device"] == "vdc"
    finished(client, client.detach_volume(copy["id"]))

    # deleting the volume keeps its snapshot
    finished(client, client.delete_volume(vol["id"]))
    with pytest.raises(Exception, match="does not exist"):
        client.volume(vol["id"])
    assert client.snapshot(snap["id"])["status"] == "completed"
    assert [s["id"] for s in client.snapshots(volume=vol["id"])] == [snap["id"]]
    for volume_id in (clone["id"], copy["id"], other["id"]):
        finished(client, client.delete_volume(volume_id))
    finished(client, client.delete_snapshot(snap["id"]))
    assert client.snapshots() == [] and client.volumes() == []
    assert {v.volume for v in server.volume_list()} == set()


def test_deleting_an_instance_releases_its_volumes(
    client: Client, kernel: str, agents: Callable[[str], AgentClient]
) -> None:
    doomed = instance(client, "doomed", kernel)
    vol = new_volume(client, size_bytes=16 * MiB)
    finished(client, client.attach_volume(vol["id"], "doomed"))
    server = agents("h1")
    assert [e.volume for e in server.export_list()] == [vol["id"]]
    job = client.wait_job(client.delete_instance(doomed["id"])["id"], timeout=60)
    assert job["status"] == "succeeded"
    assert [s["name"] for s in job["steps"]] == [
        "remove_guest",
        "remove_forwards",
        "release_volumes",
        "release",
        "remove_checkpoints",
        "disconnect_networks",
    ]
    released = client.volume(vol["id"])
    assert released["status"] == "available" and released["attachment"] is None
    assert server.export_list() == []
    finished(client, client.delete_volume(vol["id"]))


def test_the_cli_drives_volumes(cloud: Cloud, kernel: str) -> None:
    client = cloud.client()
    instance(client, "web", kernel)
    out = cloud.cli("--json", "volume", "create", "--size", "16M", "--comment", "cli").stdout
    volume_id = json.loads(out)["volume"]["id"]
    cloud.cli("volume", "attach", volume_id, "--instance", "web")
    listed = cloud.cli("volume", "describe", "--instance", "web").stdout
    assert volume_id in listed and "in-use" in listed and "vdb" in listed
    refused = cloud.cli("volume", "delete", volume_id, check=False)
    assert refused.returncode == 1 and "in-use" in refused.stderr
    cloud.cli("volume", "detach", volume_id)
    out = cloud.cli("--json", "snapshot", "create", volume_id, "--comment", "c").stdout
    snap_id = json.loads(out)["snapshot"]["id"]
    assert snap_id in cloud.cli("snapshot", "describe").stdout
    cloud.cli("volume", "extend", volume_id, "--size", "32M")
    cloud.cli("volume", "delete", volume_id)
    cloud.cli("snapshot", "delete", snap_id)
    assert "(none)" in cloud.cli("volume", "describe").stdout


@dataclass
class Interrupted:
    cloud: Cloud
    vmm: Proc
    instance: dict[str, Any]
    volume: dict[str, Any]
    job_id: str
    pool: AgentPool
    addresses: dict[str, str]

    def agent(self, host: str) -> AgentClient:
        return self.pool.for_address(self.addresses[host])


@pytest.fixture
def interrupted(make_cloud: Callable[..., Cloud], kernel: str) -> Iterator[Interrupted]:
    """A manager SIGKILLed while an attach's ``attach`` step hangs on a frozen host: the
    ``export`` step is done on the volume server h1; the instance is on h2."""
    cloud = make_cloud()
    manager = cloud.start_manager()
    add_host(cloud, "h1")
    add_host(cloud, "h2")
    vmm = cloud.agents[-1]
    client = cloud.client()
    vm = instance(client, "web", kernel, host="h2")
    vol = new_volume(client, size_bytes=16 * MiB)
    assert vol["host"] == "h1"
    assert vmm.proc is not None
    addresses = {h: client.host(h)["address"] for h in ("h1", "h2")}
    vmm.proc.send_signal(signal.SIGSTOP)
    job_id = client.attach_volume(vol["id"], "web", "vdb")["job"]["id"]

    def attaching() -> bool:
        steps = client.job(job_id)["steps"]
        return bool(steps[0]["status"] == "succeeded" and steps[1]["status"] == "running")

    try:
        wait_until(attaching, 30, "the attach step to start")
    finally:
        manager.kill(signal.SIGKILL)
    state = Interrupted(
        cloud, vmm, vm, vol, job_id, AgentPool(cloud_ca(cloud).client_files()), addresses
    )
    assert [e.volume for e in state.agent("h1").export_list()] == [vol["id"]]
    try:
        yield state
    finally:
        if vmm.proc is not None and vmm.alive():
            vmm.proc.send_signal(signal.SIGCONT)
        state.pool.close()


def cloud_ca(cloud: Cloud) -> CertificateAuthority:
    return CertificateAuthority(cloud.root / "manager" / "ca")


def test_a_manager_killed_mid_attach_resumes_it(interrupted: Interrupted) -> None:
    assert interrupted.vmm.proc is not None
    interrupted.vmm.proc.send_signal(signal.SIGCONT)
    interrupted.cloud.start_manager()
    client = interrupted.cloud.client()
    job = client.wait_job(interrupted.job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["runs"] == 2 and job["steps"][0]["attempts"] == 1
    vol = client.volume(interrupted.volume["id"])
    assert vol["status"] == "in-use"
    assert vol["attachment"]["instance"] == interrupted.instance["id"]
    assert [e.volume for e in interrupted.agent("h1").export_list()] == [vol["id"]]
    disks = interrupted.agent("h2").guest_disks(f"lamina-{interrupted.instance['id']}")
    assert "vdb" in {d.target for d in disks}


def test_a_manager_killed_mid_attach_rolls_back_when_the_host_is_gone(
    interrupted: Interrupted,
) -> None:
    interrupted.vmm.kill(signal.SIGKILL)  # the instance's host never comes back
    interrupted.cloud.start_manager()
    client = interrupted.cloud.client()
    job = client.wait_job(interrupted.job_id, timeout=300)
    # The host cannot be told to detach (that undo fails: "failed", rollback incomplete),
    # but the export is withdrawn, so no guest can reach the volume: it is available.
    assert job["status"] in ("rolled_back", "failed"), job
    assert [s["status"] for s in job["steps"]][0] == "undone"
    vol = client.volume(interrupted.volume["id"])
    assert vol["status"] == "available" and vol["attachment"] is None
    assert interrupted.agent("h1").export_list() == []
