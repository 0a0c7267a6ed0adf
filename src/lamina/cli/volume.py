"""``lamina volume``: persistent block volumes, attached to instances over iSCSI. ``list``
and ``show`` as in every group (VBS's ``describe`` kept as an alias); every command that
takes a volume, snapshot or instance takes its id or its name."""

from __future__ import annotations

import re
from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.flags import api_fields
from lamina.cli.output import emit_json, human_bytes, record, table, wait_job
from lamina.cli.verbs import alias

COLUMNS = ["id", "name", "status", "size", "instance", "device", "host", "snapshot", "comment"]
UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)
#: The values the API takes (``lamina.volumes.models``, which a unit test holds these to).
STATUSES = (
    "creating", "available", "attaching", "in-use", "detaching", "extending", "deleting", "error",
)  # fmt: skip
DEVICES = tuple(f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz")
WAIT_HELP = "Wait for the job and show its progress (default), or return at once."


def parse_size(text: str) -> int:
    """``1G``, ``512M``, ``1.5GiB``, ``4096`` -> bytes (binary units)."""
    match = SIZE.match(text.strip())
    if not match:
        raise ValueError(f"size {text!r}: write it as a number with K, M, G or T (1G)")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


class Size(click.ParamType[int]):
    """A size with a binary unit (``1G``, ``512M``), as bytes; a bad one names the flag."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


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


def _label(volume: dict[str, Any]) -> str:
    return str(volume.get("name") or volume["id"])


@click.group("volume")
def volume() -> None:
    """Persistent block volumes (docs/volumes.md).

    Every command that takes a VOLUME (or a snapshot, or an instance) takes its id or its
    name. VBS's verb describe is an alias of list.

    \b
    Examples:
      lamina volume create --size 1G --name data
      lamina volume attach data web
    """


@volume.command("create")
@api_fields(size_bytes="--size", clone="--copy")
@click.option("--name", help="A name for the volume (a DNS label; optional, need not be unique).")
@click.option("--size", type=Size(), help="Size with a unit: 1G, 512M (default: the snapshot's).")
@click.option("--snapshot", help="Make it from this snapshot (id or name).")
@click.option("--copy", is_flag=True, help="Copy the snapshot even if it could be cloned.")
@click.option("--comment", default="", help="Free text kept with the volume.")
@click.option("--host", help="The volume server (administrators; default: the first host up).")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def create(
    obj: Context,
    name: str | None,
    size: int | None,
    snapshot: str | None,
    copy: bool,
    comment: str,
    host: str | None,
    wait: bool,
) -> None:
    """Create a volume, empty or from a snapshot (copy-on-write where the backend can).

    --json prints the volume and its job as JSON.

    \b
    Examples:
      lamina volume create --name data --size 10G
      lamina volume create --name restored --snapshot nightly
    """
    if not size and not snapshot:
        raise click.UsageError("give --size, or --snapshot to make the volume from")
    result = obj.client.create_volume(
        size_bytes=size, snapshot=snapshot, comment=comment, host=host, clone=not copy, name=name
    )
    data = result["volume"]
    job = wait_job(obj, result["job"], f"creating {_label(data)}", wait)
    _show(obj, obj.client.volume(data["id"]) if wait else data, job)


@volume.command("delete")
@api_fields(volume_id="VOLUME")
@click.argument("volume_ref", metavar="VOLUME")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def delete(obj: Context, volume_ref: str, wait: bool) -> None:
    """Delete a volume (not while attached); its snapshots stay.

    --json prints the job as JSON.

    \b
    Examples:
      lamina volume delete data
      lamina volume delete vol-0123456789abcdef --no-wait
    """
    job = wait_job(obj, obj.client.delete_volume(volume_ref)["job"], f"deleting {volume_ref}", wait)
    emit_json(job) if obj.json else click.echo(f"delete: {job['status']} (job {job['id']})")


@volume.command("list")
@click.argument("volume_refs", nargs=-1, metavar="[VOLUME]...")
@click.option("--status", type=click.Choice(STATUSES), help="Only volumes in this state.")
@click.option("--instance", help="Only the volume attached to this instance (id or name).")
@click.option("--name", help="Only volumes of this name.")
@click.pass_obj
def list_(
    obj: Context,
    volume_refs: tuple[str, ...],
    status: str | None,
    instance: str | None,
    name: str | None,
) -> None:
    """List volumes: the given ones (ids or names), or all of yours.

    The INSTANCE column is the attached instance's name. --json prints the volumes as JSON
    for scripts (sizes in bytes).

    \b
    Examples:
      lamina volume list --status in-use
      lamina volume list --instance web
    """
    rows = obj.client.volumes(ids=list(volume_refs), status=status, instance=instance, name=name)
    emit_json(rows) if obj.json else table([row(v) for v in rows], COLUMNS)


@volume.command("show")
@api_fields(volume_id="VOLUME")
@click.argument("volume_ref", metavar="VOLUME")
@click.pass_obj
def show(obj: Context, volume_ref: str) -> None:
    """Show one volume (id or name), with its attachment.

    --json prints it as JSON for scripts.

    \b
    Examples:
      lamina volume show data
      lamina --json volume show vol-0123456789abcdef
    """
    data = obj.client.volume(volume_ref)
    if obj.json:
        emit_json(data)
        return
    record(row(data))


@volume.command("attach")
@api_fields(instance="INSTANCE", volume_id="VOLUME")
@click.argument("volume_ref", metavar="VOLUME")
@click.argument("instance_ref", metavar="INSTANCE", required=False)
@click.option(
    "--instance",
    "instance_option",
    help="The instance (id or name), if not given as INSTANCE (the older form).",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    metavar="vdb..vdz",
    help="The guest's disk, vdb ... vdz (default: its first free one).",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def attach(
    obj: Context,
    volume_ref: str,
    instance_ref: str | None,
    instance_option: str | None,
    device: str | None,
    wait: bool,
) -> None:
    """Attach a volume to an instance (live if it runs); both by id or name.

    --json prints the volume and its job as JSON.

    \b
    Examples:
      lamina volume attach data web
      lamina volume attach data web --device vdc
    """
    if instance_ref and instance_option and instance_ref != instance_option:
        raise click.UsageError("give the instance once: as INSTANCE or with --instance")
    instance = instance_ref or instance_option
    if not instance:
        raise click.UsageError("give the INSTANCE to attach the volume to")
    result = obj.client.attach_volume(volume_ref, instance, device)
    job = wait_job(obj, result["job"], f"attaching {volume_ref} to {instance}", wait)
    _show(obj, obj.client.volume(result["volume"]["id"]) if wait else result["volume"], job)


@volume.command("detach")
@api_fields(volume_id="VOLUME")
@click.argument("volume_ref", metavar="VOLUME")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def detach(obj: Context, volume_ref: str, wait: bool) -> None:
    """Detach a volume (id or name) from its instance.

    --json prints the volume and its job as JSON.

    \b
    Examples:
      lamina volume detach data
    """
    result = obj.client.detach_volume(volume_ref)
    job = wait_job(obj, result["job"], f"detaching {volume_ref}", wait)
    _show(obj, obj.client.volume(result["volume"]["id"]) if wait else result["volume"], job)


@volume.command("extend")
@api_fields(size_bytes="--size")
@click.argument("volume_ref", metavar="VOLUME")
@click.option("--size", type=Size(), required=True, help="The new, bigger size: 2G.")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def extend(obj: Context, volume_ref: str, size: int, wait: bool) -> None:
    """Grow a volume (id or name) that is not attached.

    --json prints the volume and its job as JSON.

    \b
    Examples:
      lamina volume extend data --size 20G
    """
    result = obj.client.extend_volume(volume_ref, size)
    job = wait_job(obj, result["job"], f"extending {volume_ref}", wait)
    _show(obj, obj.client.volume(result["volume"]["id"]) if wait else result["volume"], job)


alias(volume, "describe", of="list", why="VBS's name")


def register(cli: click.Group) -> None:
    cli.add_command(volume)
