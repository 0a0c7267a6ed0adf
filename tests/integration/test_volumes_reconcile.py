"""``lamina reconcile`` for volumes, snapshots, iSCSI targets and attachments, against a real
manager and an agent (libvirt's test driver, tgt): each inconsistency is made for real
(through the agent, as a crash or an administrator would leave it; through the database only
for a state no agent call can leave), reported with its fix, fixed, and gone afterwards."""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import pytest
from harness import Cloud

from lamina.client import Client
from lamina.wire.client import AgentClient
from lamina.wire.protocol import DiskAttach, SnapshotCreate, VolumeCreate, VolumeExport

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
TRANSITIONAL = {"creating", "attaching", "detaching", "deleting", "extending"}


def finished(client: Client, result: dict[str, Any]) -> None:
    job = client.wait_job(result["job"]["id"], timeout=120)
    assert job["status"] == "succeeded", job


def instance(client: Client, name: str, kernel: str) -> dict[str, Any]:
    result = client.create_instance(name=name, kernel=kernel, memory_mib=64)
    finished(client, {"job": result["job"]})
    return client.instance(result["instance"]["id"])


def volume(client: Client) -> str:
    result = client.create_volume(size_bytes=16 * MiB)
    finished(client, result)
    return str(result["volume"]["id"])


def set_status(cloud: Cloud, volume_id: str, status: str) -> None:
    """What a manager that lost a job would leave: no agent call makes this state."""
    with sqlite3.connect(cloud.root / "manager" / "lamina.db") as db:
        db.execute("UPDATE volumes SET status = ? WHERE id = ?", (status, volume_id))


def found(diffs: list[dict[str, Any]], kind: str, *words: str) -> list[dict[str, Any]]:
    return [d for d in diffs if d["kind"] == kind and all(w in d["resource"] for w in words)]


def test_reconcile_finds_and_fixes_volume_differences(
    cloud: Cloud, client: Client, h1_agent: AgentClient, tmp_path: Any
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not really a kernel" * 1000)
    web = instance(client, "web", str(kernel))
    db = instance(client, "db", str(kernel))
    assert client.reconcile() == []

    # A target exported with no attachment (a crash between export and record).
    stray = volume(client)
    h1_agent.volume_export(stray, VolumeExport(initiator_address="127.0.0.1"))

    # An attachment whose guest no longer has the disk.
    stale = volume(client)
    finished(client, client.attach_volume(stale, "web", "vdb"))
    h1_agent.guest_detach_disk(f"lamina-{web['id']}", "vdb")

    # An attachment whose target is gone: the guest's I/O fails; reported only.
    unexported = volume(client)
    finished(client, client.attach_volume(unexported, "web", "vdc"))
    h1_agent.volume_unexport(unexported)

    # A guest disk Lamina has no attachment for (exported and attached behind its back).
    hidden = volume(client)
    exported = h1_agent.volume_export(hidden, VolumeExport(initiator_address="127.0.0.1"))
    h1_agent.guest_attach_disk(
        f"lamina-{db['id']}",
        "vdc",
        DiskAttach(
            iqn=exported.iqn,
            lun=exported.lun,
            portal=exported.portal,
            format=exported.export_format,
            serial=hidden,
        ),
    )

    # Bytes with no record, and records whose bytes are gone.
    orphan = f"vol-{secrets.token_hex(8)}"
    h1_agent.volume_create(VolumeCreate(volume=orphan, size_bytes=8 * MiB))
    orphan_snap = f"snap-{secrets.token_hex(8)}"
    h1_agent.snapshot_create(orphan, SnapshotCreate(snapshot=orphan_snap))
    missing = volume(client)
    h1_agent.volume_delete(missing)
    result = client.create_snapshot(stray, "lost")
    finished(client, result)
    lost_snap = result["snapshot"]["id"]
    h1_agent.snapshot_delete(lost_snap)

    # Volumes stuck in a transitional state with no job.
    stuck_attaching = volume(client)
    set_status(cloud, stuck_attaching, "attaching")
    stuck_extending = volume(client)
    set_status(cloud, stuck_extending, "extending")

    diffs = client.reconcile()
    expected = {
        ("stray_export", stray, "withdraw the target"),
        (
            "stale_attachment",
            stale,
            "withdraw the target, drop the attachment, mark the volume available",
        ),
        ("unexported_attachment", unexported, None),
        ("stray_export", hidden, "withdraw the target"),
        ("stray_disk", hidden, "detach the disk from the guest"),
        ("orphan_volume", orphan, None),
        ("orphan_snapshot", orphan_snap, None),
        ("missing_volume", missing, "mark the volume error"),
        ("missing_snapshot", lost_snap, "mark the snapshot error"),
        ("stuck_volume", stuck_attaching, "mark the volume available"),
    }
    seen = {
        (d["kind"], ident, d["fix"])
        for d in diffs
        for ident in (d["resource"].split()[1], d["database"].split(":")[0].split()[-1])
        if ident.startswith(("vol-", "snap-"))
    }
    assert expected <= seen, diffs
    [extending] = found(diffs, "stuck_volume", stuck_extending)
    assert extending["fix"].startswith(f"record the server's size ({16 * MiB})")
    [disk] = found(diffs, "stray_disk", "db", "vdc")
    assert hidden in disk["database"] and "no attachment" in disk["database"]
    assert "I/O fails" in found(diffs, "unexported_attachment", unexported)[0]["backend"]
    assert len(diffs) == len(expected) + 1, diffs  # nothing else

    fixed = client.reconcile(fix=[d["id"] for d in diffs])
    outcomes = {(d["kind"], d["resource"]): d["outcome"] for d in fixed}
    for d in fixed:
        assert d["outcome"] == ("fixed" if d["fix"] else "no safe fix"), d

    # Consistent: nothing exported without an attachment, no stray disk, nothing stuck.
    assert h1_agent.export_list() == []
    assert "vdc" not in {d.target for d in h1_agent.guest_disks(f"lamina-{db['id']}")}
    assert "vdb" not in {d.target for d in h1_agent.guest_disks(f"lamina-{web['id']}")}
    states = {v["id"]: v for v in client.volumes()}
    assert not TRANSITIONAL & {v["status"] for v in states.values()}, states
    assert states[stale]["status"] == "available" and states[stale]["attachment"] is None
    assert states[stuck_attaching]["status"] == "available"
    assert states[stuck_extending]["status"] == "available"
    assert states[missing]["status"] == "error" and "missing" in states[missing]["error"]
    assert client.snapshot(lost_snap)["status"] == "error"
    assert states[unexported]["status"] == "in-use"

    # What is left needs a person: the unexported attachment and the unknown bytes.
    left = {(d["kind"], d["fix"]) for d in client.reconcile()}
    assert left == {
        ("unexported_attachment", None),
        ("orphan_volume", None),
        ("orphan_snapshot", None),
    }, outcomes

    # An administrator decides: detach, delete what is unknown, delete the rest.
    finished(client, client.detach_volume(unexported))
    h1_agent.snapshot_delete(orphan_snap)
    h1_agent.volume_delete(orphan)
    finished(client, client.delete_snapshot(lost_snap))
    for volume_id in states:
        finished(client, client.delete_volume(volume_id))
    assert client.reconcile() == []
    assert h1_agent.export_list() == [] and h1_agent.volume_list() == []
