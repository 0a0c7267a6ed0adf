"""Real QEMU guests booted through the API → manager → agent (mutual TLS) → libvirt path."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from clouds import add_host
from harness import ROOT, Cloud, wait_until

from lamina.client import Client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-guest.sh"), str(out)], check=True)
    return out


def console(client: Client, ref: str) -> str:
    return str(client.console(ref)["data"])


def virsh_names() -> str:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_real_guest_boots_and_obeys(make_cloud: Callable[..., Cloud], sample: Path) -> None:
    cloud = make_cloud()
    cloud.start_manager()
    add_host(cloud, "qemu", uri="qemu:///system")
    client = cloud.client()
    assert client.host("qemu")["domain_type"] in ("qemu", "kvm")
    kernel = sample / "vmlinux" if (sample / "vmlinux").exists() else sample / "vmlinuz"
    result = client.create_instance(
        name="real",
        kernel=str(kernel),
        initrd=str(sample / "initrd.img"),
        cmdline="console=ttyS0",
        memory_mib=128,
    )
    vm_id = result["instance"]["id"]
    try:
        assert client.wait_job(result["job"]["id"], timeout=120)["status"] == "succeeded"
        assert client.instance(vm_id)["status"] == "running"
        assert f"lamina-{vm_id}" in virsh_names()
        wait_until(lambda: "lamina-sample: booted" in console(client, vm_id), 60, "boot line")
        # The console can be read from an offset, as `instance console --follow` does.
        whole = client.console(vm_id)
        tail = client.console(vm_id, whole["offset"] - 10)
        assert tail["data"].encode().startswith(whole["data"].encode()[-10:])
        assert tail["offset"] >= whole["offset"]

        job = client.wait_job(client.instance_action(vm_id, "stop", force=True)["id"])
        assert job["status"] == "succeeded"
        assert client.instance(vm_id)["status"] == "stopped"
        job = client.wait_job(client.instance_action(vm_id, "start")["id"])
        assert job["status"] == "succeeded"
        # A fresh boot gets a fresh console log.
        wait_until(lambda: "lamina-sample: booted" in console(client, vm_id), 60, "second boot")
        job = client.wait_job(client.instance_action(vm_id, "pause")["id"])
        assert job["status"] == "succeeded" and client.instance(vm_id)["status"] == "paused"
        job = client.wait_job(client.instance_action(vm_id, "resume")["id"])
        assert job["status"] == "succeeded" and client.instance(vm_id)["status"] == "running"
    finally:
        job = client.wait_job(client.delete_instance(vm_id)["id"], timeout=120)
    assert job["status"] == "succeeded"
    assert f"lamina-{vm_id}" not in virsh_names()
