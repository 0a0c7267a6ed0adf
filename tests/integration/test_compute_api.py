"""Hosts and instances through the REST API → manager → agent (mutual TLS) → libvirt's
test driver, with real processes."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from clouds import add_host
from harness import Cloud, wait_until

from lamina.client import Client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("boot") / "vmlinuz"
    path.write_bytes(b"not really a kernel" * 1000)
    return str(path)


def create(client: Client, name: str, kernel: str, **fields: object) -> dict[str, object]:
    fields.setdefault("memory_mib", 64)
    result = client.create_instance(name=name, kernel=kernel, **fields)
    job = client.wait_job(result["job"]["id"], timeout=60)
    assert job["status"] == "succeeded", job
    return client.instance(result["instance"]["id"])


def act(client: Client, ref: str, action: str) -> str:
    job = client.wait_job(client.instance_action(ref, action)["id"], timeout=60)
    assert job["status"] == "succeeded", job
    return str(client.instance(ref)["status"])


def test_instance_lifecycle(client: Client, kernel: str) -> None:
    vm = create(client, "web", kernel, vcpus=2)
    assert vm["status"] == "running" and vm["host"] == "h1" and vm["vcpus"] == 2
    assert act(client, "web", "pause") == "paused"
    assert act(client, "web", "resume") == "running"
    assert act(client, "web", "reboot") == "running"
    assert act(client, "web", "stop") == "stopped"
    assert act(client, "web", "start") == "running"
    host = client.host("h1")
    assert host["instances"] == 1 and host["vcpus_used"] == 2 and host["memory_used_mib"] == 64
    job = client.wait_job(client.delete_instance("web")["id"], timeout=60)
    assert job["status"] == "succeeded"
    assert [s["name"] for s in job["steps"]] == [
        "remove_guest",
        "remove_forwards",
        "release_volumes",
        "release",
        "remove_checkpoints",
        "disconnect_networks",
    ]
    with pytest.raises(Exception, match="does not exist"):
        client.instance("web")
    assert client.host("h1")["instances"] == 0
    assert client.remove_host("h1")["name"] == "h1"  # its deleted instances do not hold it


def test_create_job_records_its_steps(client: Client, kernel: str) -> None:
    result = client.create_instance(name="steps", kernel=kernel, memory_mib=64)
    assert result["instance"]["status"] == "building"
    job = client.wait_job(result["job"]["id"], timeout=60)
    assert [s["name"] for s in job["steps"]] == [
        "fetch_boot_files",
        "create_disk",
        "connect_networks",
        "define_guest",
        "start_guest",
    ]
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in job["steps"])
    assert job["progress"] == 1 and job["runs"] == 1


def test_json_and_xml(cloud: Cloud, client: Client, kernel: str) -> None:
    create(client, "xml", kernel)
    as_json = cloud.http.get("/instances")
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json()["instances"][0]["name"] == "xml"
    as_xml = cloud.http.get("/instances", headers={"Accept": "application/xml"})
    assert as_xml.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(as_xml.content)
    assert root.tag == "instances"
    assert root.find("instance/name").text == "xml"  # type: ignore[union-attr]
    one = cloud.http.get("/instances/xml", headers={"Accept": "application/xml"})
    assert ET.fromstring(one.content).find("status").text == "running"  # type: ignore[union-attr]
    missing = cloud.http.get("/instances/nope", headers={"Accept": "application/xml"})
    assert missing.status_code == 404
    error = ET.fromstring(missing.content)
    assert error.tag == "error" and error.find("code").text == "not_found"  # type: ignore[union-attr]
    openapi = cloud.http.get("/openapi.json").json()
    assert "/instances" in openapi["paths"] and "/jobs/{job_id}" in openapi["paths"]
    create_op = openapi["paths"]["/instances"]["post"]["responses"]
    assert "422" not in create_op and "400" in create_op  # as the server really answers


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"name": "Bad_Name", "kernel": "/k"}, 400, "invalid_request", "lower-case"),
        ({"name": "nokernel"}, 400, "invalid_request", "kernel"),
        ({"name": "x", "kernel": "relative/path"}, 404, "not_found", "image 'relative/path'"),
        ({"name": "x", "kernel": "/k"}, 403, "path_forbidden", "compute.boot_paths"),
        ({"name": "x", "kernel": "ftp://h/k"}, 400, "invalid_request", "image"),
        ({"name": "x", "kernel": "KERNEL", "vcpus": 0}, 400, "invalid_request", "vcpus"),
        ({"name": "x", "kernel": "KERNEL", "colour": "red"}, 400, "invalid_request", "colour"),
        (
            {"name": "x", "kernel": "KERNEL", "memory_mib": 999999},
            503,
            "no_capacity",
            "no host has room",
        ),
        ({"name": "x", "kernel": "KERNEL", "host": "nowhere"}, 404, "not_found", "nowhere"),
    ],
)
def test_bad_requests_get_precise_errors(
    cloud: Cloud, kernel: str, body: dict[str, object], status: int, code: str, words: str
) -> None:
    if body.get("kernel") == "KERNEL":
        body = {**body, "kernel": kernel}
    response = cloud.http.post("/instances", json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert words in response.json()["message"]


def test_state_conflicts_are_409(cloud: Cloud, client: Client, kernel: str) -> None:
    create(client, "c1", kernel)
    act(client, "c1", "stop")
    response = cloud.http.post("/instances/c1/pause")
    assert response.status_code == 409
    assert response.json() == {
        "code": "invalid_state",
        "message": "cannot pause instance 'c1': it is stopped",
        "details": {"status": "stopped"},
    }
    again = cloud.http.post("/instances", json={"name": "c1", "kernel": kernel})
    assert again.status_code == 409 and again.json()["code"] == "conflict"


def test_a_silent_agent_marks_its_host_down_and_its_instances_unknown(
    cloud: Cloud, client: Client, kernel: str
) -> None:
    create(client, "orphaned", kernel)
    create(client, "doomed", kernel)
    agent = cloud.agents[0]
    agent.kill(signal.SIGKILL)
    wait_until(lambda: client.host("h1")["status"] == "down", 20, "host down")
    vm = client.instance("orphaned")
    assert vm["status"] == "unknown" and vm["last_status"] == "running"
    assert client.instances()[0]["status"] == "unknown"
    # Nothing fits on a down host.
    response = cloud.http.post("/instances", json={"name": "n", "kernel": kernel})
    assert response.status_code == 503
    # An instance there can still be deleted by force, without its host.
    job = client.wait_job(client.delete_instance("doomed", force=True)["id"], timeout=60)
    assert job["status"] == "succeeded", job
    assert [i["name"] for i in client.instances()] == ["orphaned"]
    # The agent comes back (already enrolled: no token); the test driver forgot its guests,
    # which reconcile reports and fixes.
    agent.start()
    wait_until(lambda: client.host("h1")["status"] == "up", 30, "host up again")
    diffs = client.reconcile()
    assert [(d["kind"], d["fix"]) for d in diffs] == [
        ("missing_guest", "mark the instance as error")
    ]
    fixed = client.reconcile(fix=[d["id"] for d in diffs])
    assert fixed[0]["outcome"] == "fixed"
    assert client.instance("orphaned")["status"] == "error"
    assert client.reconcile() == []


def test_scheduler_spreads_over_hosts_and_honours_a_named_host(
    cloud: Cloud, client: Client, kernel: str
) -> None:
    add_host(cloud, "h2")
    first = create(client, "a", kernel, memory_mib=1024)
    second = create(client, "b", kernel, memory_mib=1024)
    assert {first["host"], second["host"]} == {"h1", "h2"}  # each went to the roomier host
    pinned = create(client, "c", kernel, host=str(first["host"]))
    assert pinned["host"] == first["host"]


def test_an_instance_from_a_disk_image_gets_a_copy_on_write_root(
    cloud: Cloud, client: Client, tmp_path: Path
) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    result = client.create_instance(
        name="disky", disk_image=str(base), disk_size_mib=32, memory_mib=64
    )
    assert client.wait_job(result["job"]["id"], timeout=60)["status"] == "succeeded"
    vm = client.instance("disky")
    assert vm["status"] == "running" and vm["disk_size_bytes"] == 32 * 1024 * 1024
    root = cloud.root / "agent-h1" / "guests" / f"lamina-{vm['id']}" / "root.img"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(root)], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 32 * 1024 * 1024
    assert info["backing-filename-format"] == "qcow2"
    assert "/cache/" in info["backing-filename"]  # the shared, cached base
    client.wait_job(client.delete_instance("disky")["id"])
    assert not root.parent.exists()
