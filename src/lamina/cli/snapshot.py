"""``lamina snapshot``: point-in-time copies of volumes, independent of them. ``list`` and
``show`` as in every group (VBS's ``describe`` kept as an alias); every command that takes a
snapshot or a volume takes its id or its name."""

from __future__ import annotations

from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.flags import api_fields
from lamina.cli.output import emit_json, human_bytes, record, table, wait_job
from lamina.cli.verbs import alias

COLUMNS = ["id", "name", "volume", "status", "progress", "size", "host", "comment"]
#: The values the API takes (``lamina.volumes.models``, which a unit test holds these to).
STATUSES = ("pending", "completed", "error", "deleting")
WAIT_HELP = "Wait for the job and show its progress (default), or return at once."


def row(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot as a table shows it: size readable, its volume by name when it has one."""
    return {
        **snapshot,
        "size": human_bytes(snapshot["size_bytes"]),
        "volume": snapshot.get("volume_name") or snapshot.get("volume"),
    }


def _show(obj: Context, data: dict[str, Any], job: dict[str, Any]) -> None:
    if obj.json:
        emit_json({"snapshot": data, "job": job})
        return
    record(row(data))
    click.echo(f"job {job['id']}: {job['status']}")


@click.group("snapshot")
def snapshot() -> None:
    """Snapshots of volumes (docs/volumes.md).

    Every command that takes a SNAPSHOT or VOLUME takes its id or its name. VBS's verb
    describe is an alias of list.

    \b
    Examples:
      lamina snapshot create data --name before-upgrade
      lamina snapshot list
    """


@snapshot.command("create")
@api_fields(volume="VOLUME")
@click.argument("volume_ref", metavar="VOLUME")
@click.option("--name", help="A name for the snapshot (a DNS label; optional, need not be unique).")
@click.option("--comment", default="", help="Free text kept with the snapshot.")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def create(obj: Context, volume_ref: str, name: str | None, comment: str, wait: bool) -> None:
    """Snapshot a volume (id or name; crash-consistent if it is attached).

    --json prints the snapshot and its job as JSON.

    \b
    Examples:
      lamina snapshot create data --name nightly
      lamina snapshot create data --comment "before the upgrade"
    """
    result = obj.client.create_snapshot(volume_ref, comment, name)
    data = result["snapshot"]
    job = wait_job(obj, result["job"], f"snapshotting {volume_ref}", wait)
    _show(obj, obj.client.snapshot(data["id"]) if wait else data, job)


@snapshot.command("delete")
@click.argument("snapshot_ref", metavar="SNAPSHOT")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def delete(obj: Context, snapshot_ref: str, wait: bool) -> None:
    """Delete a snapshot (id or name; not while a volume is a copy-on-write clone of it).

    --json prints the job as JSON.

    \b
    Examples:
      lamina snapshot delete nightly
    """
    result = obj.client.delete_snapshot(snapshot_ref)
    job = wait_job(obj, result["job"], f"deleting {snapshot_ref}", wait)
    emit_json(job) if obj.json else click.echo(f"delete: {job['status']} (job {job['id']})")


@snapshot.command("list")
@click.argument("snapshot_refs", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--status", type=click.Choice(STATUSES), help="Only snapshots in this state.")
@click.option("--volume", help="Only snapshots of this volume (id or name).")
@click.option("--name", help="Only snapshots of this name.")
@click.pass_obj
def list_(
    obj: Context,
    snapshot_refs: tuple[str, ...],
    status: str | None,
    volume: str | None,
    name: str | None,
) -> None:
    """List snapshots: the given ones (ids or names), or all of yours.

    The VOLUME column is the volume's name (its id once it is deleted). --json prints the
    snapshots as JSON for scripts (sizes in bytes).

    \b
    Examples:
      lamina snapshot list --volume data
      lamina snapshot list --status completed
    """
    rows = obj.client.snapshots(ids=list(snapshot_refs), status=status, volume=volume, name=name)
    emit_json(rows) if obj.json else table([row(x) for x in rows], COLUMNS)


@snapshot.command("show")
@click.argument("snapshot_ref", metavar="SNAPSHOT")
@click.pass_obj
def show(obj: Context, snapshot_ref: str) -> None:
    """Show one snapshot (id or name).

    --json prints it as JSON for scripts.

    \b
    Examples:
      lamina snapshot show nightly
      lamina --json snapshot show snap-0123456789abcdef
    """
    data = obj.client.snapshot(snapshot_ref)
    emit_json(data) if obj.json else record({**row(data), "volume": data.get("volume")})


alias(snapshot, "describe", of="list", why="VBS's name")


def register(cli: click.Group) -> None:
    cli.add_command(snapshot)
