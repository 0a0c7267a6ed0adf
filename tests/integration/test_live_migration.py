"""Live migration for real: namespace hosts with their own libvirtd (``tests/hosts.py``), a
layered webserv instance moved from h1 to h2 while it runs, its instance layer with it
(the site id it wrote on its first boot is still there after a reboot on h2), the bad
requests refused before anything moves, the manager and then the source's agent killed
while it moves (each move still ends with the guest on exactly one host, the database
saying which), an evacuation, and a cold move of the stopped guest.

One cloud, one guest (one boot, a reboot, a restart, six moves): about a minute and a half.
``qemu+tls`` between the hosts with their migration certificates where the lab sets them up
(checked with the hosts branch merged), else plain ``qemu+tcp`` (lab only)."""

from __future__ import annotations

import inspect
import json
import re
import signal
from collections.abc import Callable
from typing import Any

import pytest
from harness import Cloud, wait_until
from hosts import lab, lab_cloud, start_agent_on  # noqa: F401 - fixtures
from test_layered_appliances import Channel, channel  # noqa: F401 - the module's fixture

from lamina.errors import LaminaError
from lamina.launcher.nshosts import Lab

pytestmark = pytest.mark.integration
BOOT = 180


def _site_id(console: str) -> str | None:
    found = re.findall(r"webserv: site-id (\S+)", console)
    return found[-1] if found else None


def _refused(call: Callable[[], Any], status: int) -> str:
    with pytest.raises(LaminaError) as caught:
        call()
    assert caught.value.status == status, caught.value
    return caught.value.message


def test_a_layered_instance_moves_live_with_its_instance_layer(
    lab: Lab,  # noqa: F811
    lab_cloud: Callable[..., Cloud],  # noqa: F811
    channel: Channel,  # noqa: F811
) -> None:
    # libvirtd on TLS with the hosts' migration certificates where the lab can (helper
    # hosts' lab_cloud(tls=True): qemu+tls, the default transport), else plain TCP.
    tls = "tls" in inspect.signature(lab_cloud).parameters
    cloud = lab_cloud(
        hosts=("h1", "h2"), **({"tls": True} if tls else {"LAMINA_MIGRATION__TRANSPORT": "tcp"})
    )
    client = cloud.client()
    client.add_channel(channel.url, channel.token)
    assert client.wait_job(client.install_appliance("webserv")["job"]["id"], 300)["status"] == (
        "succeeded"
    )
    answer = client.deploy_appliance("webserv", "web", {"domain": "www.example.org"}, networks=[])
    assert client.wait_job(answer["job"]["id"], timeout=300)["status"] == "succeeded"
    wait_until(lambda: _site_id(client.console("web")["data"]), BOOT, "web's site id")
    site = _site_id(client.console("web")["data"])
    before = client.instance("web")
    assert before["host"] == "h1"
    name = f"lamina-{before['id']}"

    # Refused before anything moves: the same host, an unknown one, a cold-only state.
    assert "already on host" in _refused(lambda: client.migrate_instance("web", "h1"), 400)
    _refused(lambda: client.migrate_instance("web", "nowhere"), 404)
    _refused(lambda: client.migrate_instance("web", "h2", "teleport"), 400)
    assert [j for j in client.jobs() if j["kind"] == "instance.migrate"] == []

    # Live, through the CLI as an administrator would.
    out = cloud.cli("--json", "instance", "migrate", "web", "--host", "h2", "--live")
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["host"] == "h2" and result["mode"] == "live"
    assert result["downtime_ms"] is not None and result["downtime_ms"] < 2000, result
    # Memory and the instance layer moved; the read-only layers were fetched by h2 itself.
    assert 0 < result["memory_bytes"] <= 256 * 1024 * 1024 * 1.1, result
    assert lab.hosts["h1"].virsh("list", "--all", "--name").split() == []
    assert lab.hosts["h2"].virsh("list", "--name").split() == [name]
    after = client.instance("web")
    assert (after["host"], after["status"]) == ("h2", "running")
    assert after["started_at"] == before["started_at"]  # the same boot, still running
    state = lab.hosts["h2"].virsh("domstate", name, "--reason").strip()
    assert state.startswith("running"), state

    # The instance layer came along: rebooted on h2, it finds the site id it wrote on h1.
    job = client.wait_job(client.instance_action("web", "reboot")["id"], timeout=120)
    assert job["status"] == "succeeded", job
    wait_until(lambda: "lamina-base: ready" in client.console("web")["data"], BOOT, "web up on h2")
    assert _site_id(client.console("web")["data"]) == site

    # The manager killed while the guest moves (h2 -> h1): the next one resumes the job.
    job_id = client.migrate_instance("web", "h1")["id"]
    _in_step(client, job_id, "migrate")
    cloud.managers[-1].kill(signal.SIGKILL)
    cloud.start_manager()
    job = client.wait_job(job_id, timeout=300)
    assert job["status"] == "succeeded" and job["runs"] == 2, job
    _only_on(lab, client, "h1", name)

    # The source's agent killed while the guest moves (h1 -> h2): libvirtd carries on, the
    # agent comes back, the job finds the guest arrived.
    job_id = client.migrate_instance("web", "h2")["id"]
    _in_step(client, job_id, "migrate")
    agent = next(a for a in cloud.agents if a.name == "agent-h1" and a.alive())
    agent.kill(signal.SIGKILL)
    start_agent_on(cloud, lab.hosts["h1"], None)
    job = client.wait_job(job_id, timeout=300)
    assert job["status"] == "succeeded", job
    _only_on(lab, client, "h2", name)

    # Evacuating h2 moves it back to h1 (the only other host), live.
    job = client.wait_job(client.evacuate_host("h2")["id"], timeout=600)
    assert job["status"] == "succeeded", job
    [entry] = job["result"]["report"]
    assert (entry["name"], entry["outcome"], entry["host"], entry["mode"]) == (
        "web", "moved", "h1", "live",
    )  # fmt: skip
    _only_on(lab, client, "h1", name)
    assert client.instance("web")["status"] == "running"

    # Stopped, it moves cold (started paused on h1, never running there) and stays stopped;
    # started on h2 it finds its instance layer.
    job = client.wait_job(client.instance_action("web", "stop")["id"], timeout=120)
    assert job["status"] == "succeeded", job
    job = client.wait_job(client.migrate_instance("web", "h2", "cold")["id"], timeout=300)
    assert job["status"] == "succeeded" and job["result"]["mode"] == "cold", job
    assert (client.instance("web")["host"], client.instance("web")["status"]) == ("h2", "stopped")
    assert lab.hosts["h2"].virsh("domstate", name).strip() == "shut off"
    assert lab.hosts["h1"].virsh("list", "--all", "--name").split() == []
    job = client.wait_job(client.instance_action("web", "start")["id"], timeout=120)
    assert job["status"] == "succeeded", job
    wait_until(lambda: _site_id(client.console("web")["data"]), BOOT, "web up again on h2")
    assert _site_id(client.console("web")["data"]) == site


def _in_step(client: Any, job_id: str, step: str) -> None:
    def running() -> bool:
        steps = {s["name"]: s["status"] for s in client.job(job_id)["steps"]}
        return steps.get(step) == "running"

    wait_until(running, 120, f"step {step} of job {job_id}", interval=0.05)


def _only_on(lab: Lab, client: Any, host: str, name: str) -> None:  # noqa: F811
    """The guest runs on ``host`` alone, and the database says so."""
    other = "h2" if host == "h1" else "h1"
    assert lab.hosts[host].virsh("list", "--name").split() == [name]
    assert lab.hosts[other].virsh("list", "--all", "--name").split() == []
    assert client.instance("web")["host"] == host
