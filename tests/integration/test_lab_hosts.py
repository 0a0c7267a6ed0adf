"""Namespace hosts, for real: three hosts of one machine, each with its own libvirtd, their
agents enrolled with one manager; a guest on one host is seen by its own libvirtd only."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import ROOT, Cloud, wait_until

from lamina.launcher.nshosts import Lab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-guest.sh"), str(out)], check=True)
    return out


def test_three_hosts_each_with_its_own_libvirtd(
    lab: Lab,
    lab_cloud: Callable[..., Cloud],
    sample: Path,
) -> None:
    cloud = lab_cloud(hosts=("h1", "h2", "h3"))
    client = cloud.client()
    hosts = {h["name"]: h for h in client.hosts()}
    assert {n: h["status"] for n, h in hosts.items()} == dict.fromkeys(("h1", "h2", "h3"), "up")
    assert {h["address"] for h in hosts.values()} == {
        f"{lab.hosts[n].address}:8776" for n in ("h1", "h2", "h3")
    }
    kernel = sample / "vmlinux" if (sample / "vmlinux").exists() else sample / "vmlinuz"
    result = client.create_instance(
        name="far", kernel=cloud.boot_image(kernel), initrd=cloud.boot_image(sample / "initrd.img"),
        cmdline="console=ttyS0", memory_mib=128, host="h2",
    )  # fmt: skip
    vm = result["instance"]["id"]
    assert client.wait_job(result["job"]["id"], timeout=180)["status"] == "succeeded"
    wait_until(lambda: "lamina-sample: booted" in client.console(vm)["data"], 90, "boot line")
    names = {n: lab.hosts[n].virsh("list", "--all", "--name").split() for n in lab.hosts}
    assert names == {"h1": [], "h2": [f"lamina-{vm}"], "h3": []}
    root = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"lamina-{vm}" not in root
