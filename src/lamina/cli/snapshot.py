"""``lamina snapshot``: point-in-time copies of volumes, independent of them."""

from __future__ import annotations

from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, human_bytes, record, table, wait_job

COLUMNS = ["id", "volume", "status", "progress", "size", "host", "comment"]


def row(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {**snapshot, "size": human_bytes(snapshot["size_bytes"])}


@click.group("snapshot")
def snapshot() -> None:
    """Snapshots of volumes (docs/volumes.md)."""


@snapshot.command("create")
@click.argument("volume_id")
@click.option("--comment", default="", help="Free text kept with the snapshot.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def create(obj: Context, volume_id: str, comment: str, wait: bool) -> None:
    """Snapshot a volume (crash-consistent if it is attached)."""
    result = obj.client.create_snapshot(volume_id, comment)
    data = result["snapshot"]
    job = wait_job(obj, result["job"], f"snapshotting {volume_id}", wait)
    data = obj.client.snapshot(data["id"]) if wait else data
    if obj.json:
        emit_json({"snapshot": data, "job": job})
        return
    record(row(data))
    click.echo(f"job {job['id']}: {job['status']}")


@snapshot.command("delete")
@click.argument("snapshot_id")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def delete(obj: Context, snapshot_id: str, wait: bool) -> None:
    """Delete a snapshot (not while a volume is a copy-on-write clone of it)."""
    result = obj.client.delete_snapshot(snapshot_id)
    job = wait_job(obj, result["job"], f"deleting {snapshot_id}", wait)
    emit_json(job) if obj.json else click.echo(f"delete: {job['status']} (job {job['id']})")


@snapshot.command("describe")
@click.argument("snapshot_ids", nargs=-1)
@click.option("--status", help="Only snapshots in this state.")
@click.option("--volume", help="Only snapshots of this volume.")
@click.pass_obj
def describe(
    obj: Context, snapshot_ids: tuple[str, ...], status: str | None, volume: str | None
) -> None:
    """Describe snapshots: the given ones, or all of yours."""
    rows = obj.client.snapshots(ids=list(snapshot_ids), status=status, volume=volume)
    emit_json(rows) if obj.json else table([row(x) for x in rows], COLUMNS)


def register(cli: click.Group) -> None:
    cli.add_command(snapshot)
