"""``lamina host disable|enable`` and the scheduler's policies as an administrator meets them,
against a manager with two agents (libvirt's test driver): a disabled host takes no new
instance, says why in ``host list`` and ``host show``, keeps its heartbeats, and is refused by
name with a clear error; ``pack`` fills one host, and a ``--group`` still spreads."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from clouds import add_host
from harness import Cloud, wait_until

pytestmark = pytest.mark.e2e


def create(cloud: Cloud, name: str, kernel: str, *more: str) -> dict[str, Any]:
    out = cloud.cli("--json", "instance", "create", name, "--kernel", kernel, "--memory", "64",
                    *more).stdout  # fmt: skip
    return dict(json.loads(out))


def host(cloud: Cloud, name: str) -> dict[str, Any]:
    return dict(json.loads(cloud.cli("--json", "host", "show", name).stdout))


def test_disable_enable_and_placement_over_two_hosts(
    make_cloud: Callable[..., Cloud], kernel: str
) -> None:
    cloud = make_cloud(LAMINA_COMPUTE__SCHEDULER="pack")
    cloud.start_manager()
    add_host(cloud, "h1")
    add_host(cloud, "h2")

    # pack: the two hosts are alike, so the first goes to h1 (by name), the next to the
    # fuller h1 too; a group's second member goes where the group has none.
    assert create(cloud, "a", kernel)["host"] == "h1"
    assert create(cloud, "b", kernel)["host"] == "h1"
    assert create(cloud, "web1", kernel, "--group", "web")["host"] == "h1"
    assert create(cloud, "web2", kernel, "--group", "web")["host"] == "h2"

    out = cloud.cli("host", "disable", "h1", "--reason", "DIMM to replace").stdout
    assert out == "host h1 disabled: no new instances; it still runs 3 instance(s)\n"
    listed = cloud.cli("host", "list").stdout.splitlines()
    assert listed[0].split()[:3] == ["NAME", "STATUS", "DISABLED"]
    assert listed[1].startswith("h1") and "  up  " in listed[1]
    assert "yes: DIMM to replace" in listed[1], listed
    assert listed[2].split()[:3] == ["h2", "up", "no"], listed
    shown = cloud.cli("host", "show", "h1").stdout
    assert any(line.split() == ["disabled", "yes"] for line in shown.splitlines()), shown
    assert any(
        line.split(maxsplit=1) == ["disabled_reason", "DIMM to replace"]
        for line in shown.splitlines()
    ), shown

    # pack would take h1, the fuller: it is disabled, so h2.
    assert create(cloud, "c", kernel)["host"] == "h2"
    refused = cloud.cli("instance", "create", "d", "--kernel", kernel, "--memory", "64",
                        "--host", "h1", check=False)  # fmt: skip
    assert refused.returncode == 1
    assert "host 'h1' is disabled (DIMM to replace): it takes no new instances" in refused.stderr

    # It still runs what it ran, and still answers heartbeats.
    before = host(cloud, "h1")["last_heartbeat"]
    wait_until(lambda: host(cloud, "h1")["last_heartbeat"] != before, 30, "a heartbeat")
    assert host(cloud, "h1")["status"] == "up"
    with cloud.client() as client:
        on_h1 = {i["name"]: i["status"] for i in client.instances() if i["host"] == "h1"}
    assert on_h1 == {"a": "running", "b": "running", "web1": "running"}

    assert cloud.cli("host", "enable", "h1").stdout == "host h1 enabled\n"
    again = host(cloud, "h1")
    assert not again["disabled"] and again["disabled_reason"] is None
    assert create(cloud, "d", kernel, "--host", "h1")["host"] == "h1"

    # Unknown and full hosts, named: each a clear 4xx naming the host.
    unknown = cloud.cli("host", "disable", "h9", check=False)
    assert unknown.returncode == 1 and "host 'h9' does not exist" in unknown.stderr
    huge = cloud.cli("--json", "instance", "create", "e", "--kernel", kernel,
                     "--memory", str(1024 * 1024), "--host", "h2", check=False)  # fmt: skip
    assert huge.returncode == 1
    error = json.loads(huge.stderr)["error"]
    assert error["code"] == "host_full", error
    assert error["message"].startswith("host 'h2' has no room for 1 vCPU(s) and 1048576 MiB")
