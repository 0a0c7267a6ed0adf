"""``lamina instance checkpoint`` and ``lamina instance restore``: an instance's memory and
instance layer saved together, and the instance restored from them (on its host or
another)."""

from __future__ import annotations

import time
from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, human_bytes, record, table, wait_job

COLUMNS = ["name", "instance_name", "status", "size", "paused_seconds", "created_at"]
WAIT_HELP = "Wait for the job to finish, with a progress bar (--no-wait: print it and return)."


class CheckpointGroup(click.Group):
    """``checkpoint NAME`` takes a checkpoint (the hidden ``create``); ``checkpoint list``,
    ``show`` and ``delete`` are subcommands. An instance named like one of them is
    checkpointed with ``checkpoint create NAME``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["create", *args]
        return super().parse_args(ctx, args)


@click.group("checkpoint", cls=CheckpointGroup)
def checkpoint() -> None:
    """Save a running layered instance's memory and instance layer together.

    `lamina instance checkpoint NAME [--as C]` takes one: the guest is paused while its
    memory is written and its disks copied, then runs on. Its files are private images of
    yours. `lamina instance restore NAME C [--host H]` brings it back, on any host that can
    run it.

    \b
    Examples:
      lamina instance checkpoint web --as before-upgrade
      lamina instance checkpoint list web
    """


@checkpoint.command("create")
@click.argument("ref")
@click.option("--as", "name", help="The checkpoint's name (default: c-<UTC date-time>).")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def create(obj: Context, ref: str, name: str | None, wait: bool) -> None:
    """Checkpoint the running or paused layered instance REF (its name or id).

    \b
    Examples:
      lamina instance checkpoint web --as before-upgrade
    """
    started = time.monotonic()
    answer = obj.client.create_checkpoint(ref, name)
    made = answer["checkpoint"]
    job = wait_job(obj, answer["job"], f"checkpoint {ref}", wait)
    if obj.json:
        emit_json({"checkpoint": obj.client.checkpoint(ref, made["id"]) if wait else made,
                   "job": job})  # fmt: skip
        return
    if not wait:
        click.echo(f"checkpoint {made['name']}: {job['status']} (job {job['id']})")
        return
    done = obj.client.checkpoint(ref, made["id"])
    click.echo(
        f"checkpoint {done['name']} of {ref}: {done['status']}, {human_bytes(done['size'])}, "
        f"guest paused {done['paused_seconds']:.2f} s, {time.monotonic() - started:.1f} s "
        "in all"
    )


@checkpoint.command("list")
@click.argument("ref", required=False)
@click.pass_obj
def list_(obj: Context, ref: str | None) -> None:
    """The checkpoints of instance REF, or of every instance you may see.

    \b
    Examples:
      lamina instance checkpoint list web
      lamina instance checkpoint list
    """
    rows = obj.client.checkpoints(ref)
    if obj.json:
        emit_json(rows)
        return
    table([_row(r) for r in rows], COLUMNS)


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "size": human_bytes(row.get("size") or 0)}


@checkpoint.command("show")
@click.argument("ref")
@click.argument("name")
@click.pass_obj
def show(obj: Context, ref: str, name: str) -> None:
    """One checkpoint of instance REF: what it needs of a host, its images.

    \b
    Examples:
      lamina instance checkpoint show web before-upgrade
    """
    found = obj.client.checkpoint(ref, name)
    if obj.json:
        emit_json(found)
        return
    record(_row(found))
    for key, value in sorted((found.get("requires") or {}).items()):
        click.echo(f"requires.{key}  {value}")
    for role, image in sorted((found.get("images") or {}).items()):
        click.echo(f"image.{role}  {image}")


@checkpoint.command("delete")
@click.argument("ref")
@click.argument("name")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def delete(obj: Context, ref: str, name: str, wait: bool) -> None:
    """Delete checkpoint NAME of instance REF and its images.

    \b
    Examples:
      lamina instance checkpoint delete web before-upgrade
    """
    job = wait_job(obj, obj.client.delete_checkpoint(ref, name), f"delete {name}", wait)
    if obj.json:
        emit_json(job)
    else:
        click.echo(f"delete {name}: {job['status']} (job {job['id']})")


@click.command("restore")
@click.argument("ref")
@click.argument("name")
@click.option("--host", help="Restore it on this host (default: the instance's own).")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def restore(obj: Context, ref: str, name: str, host: str | None, wait: bool) -> None:
    """Replace what instance REF runs by its checkpoint NAME, on its host or --host.

    A host that cannot run the checkpoint (another QEMU, machine type or CPU) is refused
    with the reasons before anything is touched.

    \b
    Examples:
      lamina instance restore web before-upgrade
      lamina instance restore web before-upgrade --host h2
    """
    started = time.monotonic()
    job = wait_job(obj, obj.client.restore_checkpoint(ref, name, host), f"restore {ref}", wait)
    if obj.json:
        emit_json(job)
    else:
        took = f", {time.monotonic() - started:.1f} s" if wait else ""
        click.echo(f"restore {ref} from {name}: {job['status']} (job {job['id']}){took}")
