"""An agent's errors arrive in the manager as their own class (issue 13, item 3): the
``except GuestNotFound`` branches around agent calls run, with a real manager and a real
agent (libvirt's test driver, tgt).

Each test makes a guest vanish from the hypervisor behind Lamina's back (through the agent,
as an administrator's ``virsh undefine`` would) and then drives the undo or reconcile path
that must take the guest-is-gone branch: through the manager's job runner where a job can
get there, and in-process (a manager's ``Services`` on the cloud's own database and CA,
calling the real agent) where only a race between two agent calls gets there. Before
errors crossed the wire by code, each of these got a plain ``NotFound`` and failed.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Cloud

from lamina.client import Client
from lamina.compute import reconcile as compute_reconcile
from lamina.compute.jobs import destroy_guest
from lamina.config import ENV_PREFIX, load_settings
from lamina.errors import GuestNotFound
from lamina.jobs.kinds import StepContext
from lamina.manager import build_services
from lamina.services import Services
from lamina.volumes import reconcile as volumes_reconcile
from lamina.wire.client import AgentClient
from lamina.wire.protocol import DiskAttach, VolumeExport

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture
def services(cloud: Cloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A manager's Services in this process, on the cloud's own data (database, CA, and so
    deployment): what the manager's job steps and reconcile run with."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    settings = tmp_path / "lamina.toml"
    settings.write_text("[reconcile]\ngrace_seconds = 0\n")  # as the cloud's manager
    svc = build_services(load_settings(settings, data_dir=cloud.root / "manager"))
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def kernel(tmp_path: Path) -> str:
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"not really a kernel" * 1000)
    return str(path)


def finished(client: Client, result: dict[str, Any]) -> dict[str, Any]:
    return client.wait_job(result["id"] if "id" in result else result["job"]["id"], timeout=120)


def instance(client: Client, name: str, kernel: str) -> dict[str, Any]:
    result = client.create_instance(name=name, kernel=kernel, memory_mib=64)
    assert finished(client, result)["status"] == "succeeded"
    return client.instance(result["instance"]["id"])


def volume(client: Client) -> str:
    result = client.create_volume(size_bytes=16 * MiB)
    assert finished(client, result)["status"] == "succeeded"
    return str(result["volume"]["id"])


def vanish(h1_agent: AgentClient, guest: str) -> None:
    """The guest is gone from the hypervisor (what the agent then answers is the first
    test's business)."""
    h1_agent.undefine(guest)
    assert guest not in {g.name for g in h1_agent.guests()}


def test_the_agent_answers_a_vanished_guest_with_guest_not_found(
    client: Client, h1_agent: AgentClient, kernel: str
) -> None:
    web = instance(client, "web", kernel)
    guest = f"lamina-{web['id']}"
    h1_agent.undefine(guest)
    for call in (
        lambda: h1_agent.guest(guest),
        lambda: h1_agent.act(guest, "destroy"),
        lambda: h1_agent.guest_disks(guest),
        lambda: h1_agent.guest_detach_disk(guest, "vdb"),
    ):
        with pytest.raises(GuestNotFound) as caught:
            call()
        assert caught.value.code == "guest_not_found" and caught.value.status == 404
        assert caught.value.details == {"guest": guest}


def test_detaching_a_volume_from_a_vanished_guest_succeeds(
    client: Client, h1_agent: AgentClient, kernel: str
) -> None:
    """volume.detach's ``detach`` step: the guest is gone, so is its disk."""
    web = instance(client, "web", kernel)
    vol = volume(client)
    assert finished(client, client.attach_volume(vol, "web", "vdb"))["status"] == "succeeded"
    vanish(h1_agent, f"lamina-{web['id']}")

    job = finished(client, client.detach_volume(vol))
    assert job["status"] == "succeeded", job
    assert client.volume(vol)["status"] == "available"
    assert client.volume(vol)["attachment"] is None
    assert h1_agent.export_list() == []


def test_an_attach_to_a_vanished_guest_is_undone_cleanly(
    client: Client, h1_agent: AgentClient, kernel: str
) -> None:
    """volume.attach fails at ``attach`` (no guest); its undo (detach) finds the guest gone
    and is done, the export is withdrawn: the volume is available, not ``error``."""
    web = instance(client, "web", kernel)
    vol = volume(client)
    vanish(h1_agent, f"lamina-{web['id']}")

    job = finished(client, client.attach_volume(vol, "web", "vdb"))
    assert job["status"] == "rolled_back", job  # every undo done ("failed" when one was not)
    steps = {s["name"]: s["status"] for s in job["steps"]}
    assert steps == {"export": "undone", "attach": "undone", "record": "pending"}, job
    assert "does not exist on this host" in str(job["error"])
    assert client.volume(vol)["status"] == "available", client.volume(vol)
    assert h1_agent.export_list() == []


def test_the_undo_of_start_guest_finds_the_guest_gone(
    client: Client, h1_agent: AgentClient, services: Services, kernel: str
) -> None:
    """instance.create's ``start_guest`` undo (destroy) on a guest that vanished: nothing
    left to stop, so the undo is done (and the rollback goes on to undefine and the disk)."""
    web = instance(client, "web", kernel)
    vanish(h1_agent, f"lamina-{web['id']}")
    ctx = StepContext("job-test", {"instance_id": web["id"]}, {}, services)
    destroy_guest(ctx)  # raised NotFound when the agent's error was rebuilt from its status


def test_volume_reconcile_keeps_a_host_whose_guest_vanishes_while_it_looks(
    client: Client,
    h1_agent: AgentClient,
    services: Services,
    kernel: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guest is listed, then gone when its disks are asked for: reconcile passes over
    that guest and still compares the rest of its host (here: a stray export)."""
    web = instance(client, "web", kernel)
    guest = f"lamina-{web['id']}"
    stray = volume(client)
    h1_agent.volume_export(stray, VolumeExport(initiator_address="127.0.0.1"))

    listed = AgentClient.guests

    def guests_then_vanish(self: AgentClient) -> Any:
        found = listed(self)
        self.undefine(guest)  # between the listing and the next call
        return found

    monkeypatch.setattr(AgentClient, "guests", guests_then_vanish)
    diffs = volumes_reconcile.find_volume_differences(services)
    assert [(d.kind, d.resource.split()[1]) for d in diffs] == [("stray_export", stray)], diffs


def test_volume_reconcile_detaches_a_stray_disk_of_a_guest_gone_since(
    client: Client, h1_agent: AgentClient, services: Services, kernel: str
) -> None:
    """A stray disk is found; the guest vanishes before the fix is applied: the disk is gone
    with it, and the fix is done rather than failed."""
    web = instance(client, "web", kernel)
    guest = f"lamina-{web['id']}"
    hidden = volume(client)
    exported = h1_agent.volume_export(hidden, VolumeExport(initiator_address="127.0.0.1"))
    h1_agent.guest_attach_disk(
        guest,
        "vdc",
        DiskAttach(
            iqn=exported.iqn,
            lun=exported.lun,
            portal=exported.portal,
            format=exported.export_format,
            serial=hidden,
        ),
    )
    diffs = volumes_reconcile.find_volume_differences(services)
    [stray_disk] = [d for d in diffs if d.kind == "stray_disk"]
    assert stray_disk.apply is not None
    vanish(h1_agent, guest)
    stray_disk.apply()  # raised NotFound when the agent's error was rebuilt from its status


def test_compute_reconcile_fix_of_an_orphan_guest_gone_since(
    cloud: Cloud, client: Client, h1_agent: AgentClient, services: Services, kernel: str
) -> None:
    """An orphan guest is found; it is gone before the fix (undefine) is applied: the fix is
    done, because the agent's undefine is a no-op for an unknown guest (the hypervisor
    contract holds every driver to it), so reconcile needs no ``except GuestNotFound``."""
    web = instance(client, "web", kernel)
    guest = f"lamina-{web['id']}"
    with sqlite3.connect(cloud.root / "manager" / "lamina.db") as db:
        db.execute("UPDATE instances SET status = 'deleted' WHERE id = ?", (web["id"],))
    diffs = compute_reconcile.find_differences(services)
    [orphan] = [d for d in diffs if d.kind == "orphan_guest"]
    assert orphan.apply is not None and guest in orphan.resource
    vanish(h1_agent, guest)
    orphan.apply()
    assert compute_reconcile.find_differences(services) == []
