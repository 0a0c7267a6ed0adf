"""``lamina volume``: persistent block volumes, attached to instances over iSCSI."""

from __future__ import annotations

import re
from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, human_bytes, record, table, wait_job
from lamina.errors import InvalidRequest

COLUMNS = ["id", "status", "size", "instance", "device", "host", "snapshot", "comment"]
UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1G``, ``512M``, ``1.5GiB``, ``4096`` -> bytes (binary units)."""
    match = SIZE.match(text.strip())
    if not match:
        raise InvalidRequest(f"size {text!r}: write it as a number with K, M, G or T (1G)")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def row(volume: dict[str, Any]) -> dict[str, Any]:
    attachment = volume.get("attachment") or {}
    return {
        **volume,
        "size": human_bytes(volume["size_bytes"]),
        "instance": attachment.get("instance_name") or attachment.get("instance"),
        "device": attachment.get("device"),
    }


def _show(obj: Context, data: dict[str, Any], job: dict[str, Any]) -> None:
    if obj.json:
        emit_json({"volume": data, "job": job})
        return
    record(row(data))
    click.echo(f"job {job['id']}: {job['status']}")


@click.group("volume")
def volume() -> None:
    """Persistent block volumes (docs/volumes.md)."""


@volume.command("create")
@click.option("--size", help="Size with a unit: 1G, 512M (default: the snapshot's).")
@click.option("--snapshot", help="Make it from this snapshot.")
@click.option("--copy", is_flag=True, help="Copy the snapshot even if it could be cloned.")
@click.option("--comment", default="", help="Free text kept with the volume.")
@click.option("--host", help="The volume server (administrators; default: the first host up).")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def create(
    obj: Context,
    size: str | None,
    snapshot: str | None,
    copy: bool,
    comment: str,
    host: str | None,
    wait: bool,
) -> None:
    """Create a volume, empty or from a snapshot (copy-on-write where the backend can)."""
    if not size and not snapshot:
        raise InvalidRequest("give --size, or --snapshot to make the volume from")
    result = obj.client.create_volume(
        size_bytes=parse_size(size) if size else None,
        snapshot=snapshot,
        comment=comment,
        host=host,
        clone=not copy,
    )
    data = result["volume"]
    job = wait_job(obj, result["job"], f"creating {data['id']}", wait)
    _show(obj, obj.client.volume(data["id"]) if wait else data, job)


@volume.command("delete")
@click.argument("volume_id")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def delete(obj: Context, volume_id: str, wait: bool) -> None:
    """Delete a volume (not while attached); its snapshots stay."""
    job = wait_job(obj, obj.client.delete_volume(volume_id)["job"], f"deleting {volume_id}", wait)
    emit_json(job) if obj.json else click.echo(f"delete: {job['status']} (job {job['id']})")


@volume.command("describe")
@click.argument("volume_ids", nargs=-1)
@click.option("--status", help="Only volumes in this state.")
@click.option("--instance", help="Only the volume attached to this instance (id or name).")
@click.pass_obj
def describe(
    obj: Context, volume_ids: tuple[str, ...], status: str | None, instance: str | None
) -> None:
    """Describe volumes: the given ones, or all of yours."""
    rows = obj.client.volumes(ids=list(volume_ids), status=status, instance=instance)
    emit_json(rows) if obj.json else table([row(v) for v in rows], COLUMNS)


@volume.command("attach")
@click.argument("volume_id")
@click.option("--instance", required=True, help="The instance (id or name).")
@click.option("--device", help="The guest's disk, vdb ... vdz (default: its first free one).")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def attach(obj: Context, volume_id: str, instance: str, device: str | None, wait: bool) -> None:
    """Attach a volume to an instance (live if it runs)."""
    result = obj.client.attach_volume(volume_id, instance, device)
    job = wait_job(obj, result["job"], f"attaching {volume_id} to {instance}", wait)
    _show(obj, obj.client.volume(volume_id) if wait else result["volume"], job)


@volume.command("detach")
@click.argument("volume_id")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def detach(obj: Context, volume_id: str, wait: bool) -> None:
    """Detach a volume from its instance."""
    result = obj.client.detach_volume(volume_id)
    job = wait_job(obj, result["job"], f"detaching {volume_id}", wait)
    _show(obj, obj.client.volume(volume_id) if wait else result["volume"], job)


@volume.command("extend")
@click.argument("volume_id")
@click.option("--size", required=True, help="The new, bigger size: 2G.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def extend(obj: Context, volume_id: str, size: str, wait: bool) -> None:
    """Grow a volume that is not attached."""
    result = obj.client.extend_volume(volume_id, parse_size(size))
    job = wait_job(obj, result["job"], f"extending {volume_id}", wait)
    _show(obj, obj.client.volume(volume_id) if wait else result["volume"], job)


def register(cli: click.Group) -> None:
    cli.add_command(volume)
