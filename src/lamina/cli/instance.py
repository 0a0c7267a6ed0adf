"""``lamina instance``: create, act on, watch and delete instances."""

from __future__ import annotations

import time

import click

from lamina.cli.main import Context
from lamina.cli.output import emit_json, record, table, wait_job

COLUMNS = ["name", "id", "status", "host", "vcpus", "memory_mib"]


@click.group("instance")
def instance() -> None:
    """Virtual machines."""


@instance.command("create")
@click.argument("name")
@click.option("--vcpus", type=int, default=1, show_default=True)
@click.option("--memory", type=int, default=256, show_default=True, help="MiB")
@click.option("--kernel", help="Kernel: absolute path on the host, file:// or http(s):// URL.")
@click.option("--initrd", help="Initramfs, same forms as --kernel.")
@click.option("--cmdline", default="console=ttyS0", show_default=True)
@click.option("--disk-image", help="Boot disk image (qcow2/raw), used as a copy-on-write base.")
@click.option("--disk-size", type=int, help="Root disk size in MiB.")
@click.option("--host", help="Place on this host instead of letting the scheduler choose.")
@click.option("--public", is_flag=True, help="Let every user see it (read-only).")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def create(
    obj: Context,
    name: str,
    vcpus: int,
    memory: int,
    kernel: str | None,
    initrd: str | None,
    cmdline: str,
    disk_image: str | None,
    disk_size: int | None,
    host: str | None,
    public: bool,
    wait: bool,
) -> None:
    """Create and boot an instance."""
    result = obj.client.create_instance(
        name=name,
        vcpus=vcpus,
        memory_mib=memory,
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        disk_image=disk_image,
        disk_size_mib=disk_size,
        host=host,
        visibility="public" if public else "private",
    )
    wait_job(obj, result["job"], f"creating {name}", wait)
    data = obj.client.instance(result["instance"]["id"]) if wait else result["instance"]
    emit_json(data) if obj.json else record(data)


@instance.command("list")
@click.option("--status")
@click.option("--host")
@click.option("--detail", is_flag=True)
@click.pass_obj
def list_(obj: Context, status: str | None, host: str | None, detail: bool) -> None:
    """List instances."""
    rows = obj.client.instances(detail=detail, status=status, host=host)
    emit_json(rows) if obj.json else table(rows, COLUMNS + (["error"] if detail else []))


@instance.command("show")
@click.argument("ref")
@click.pass_obj
def show(obj: Context, ref: str) -> None:
    """Show one instance (by id or name)."""
    data = obj.client.instance(ref)
    emit_json(data) if obj.json else record(data)


def _action(name: str, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("ref")
    @click.option("--wait/--no-wait", default=True, show_default=True)
    @click.pass_obj
    def command(obj: Context, ref: str, wait: bool, force: bool = False) -> None:
        job = wait_job(obj, obj.client.instance_action(ref, name, force), f"{name} {ref}", wait)
        if obj.json:
            emit_json(job)
        else:
            click.echo(f"{name}: {job['status']} (job {job['id']})")

    return command


def _stop() -> click.Command:
    command = _action("stop", "Shut an instance down (forced off after a grace period).")
    return click.option("--force", is_flag=True, help="Power off at once.")(command)


for _name, _doc in (
    ("start", "Boot a stopped instance."),
    ("pause", "Freeze an instance's vCPUs."),
    ("resume", "Resume a paused instance."),
    ("reboot", "Reset a running instance."),
):
    instance.add_command(_action(_name, _doc))
instance.add_command(_stop())


@instance.command("delete")
@click.argument("ref")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--force", is_flag=True, help="Delete the record even if the host is unreachable.")
@click.pass_obj
def delete(obj: Context, ref: str, wait: bool, force: bool) -> None:
    """Destroy an instance and its disks."""
    job = wait_job(obj, obj.client.delete_instance(ref, force), f"deleting {ref}", wait)
    emit_json(job) if obj.json else click.echo(f"delete: {job['status']} (job {job['id']})")


@instance.command("console")
@click.argument("ref")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output.")
@click.pass_obj
def console(obj: Context, ref: str, follow: bool) -> None:
    """Print an instance's console log."""
    offset = 0
    while True:
        chunk = obj.client.console(ref, offset)
        if chunk["data"]:
            click.echo(chunk["data"], nl=False)
        offset = chunk["offset"]
        if not follow:
            return
        if not chunk["data"]:
            time.sleep(0.5)


@instance.command("update")
@click.argument("ref")
@click.option("--visibility", type=click.Choice(["private", "public"]), required=True)
@click.pass_obj
def update(obj: Context, ref: str, visibility: str) -> None:
    """Make an instance public (read-only to every user) or private; owners only."""
    data = obj.client.set_visibility(ref, visibility)
    emit_json(data) if obj.json else record(data)


@instance.command("share")
@click.argument("ref")
@click.argument("user")
@click.option("--operate", is_flag=True, help="Also let them start, stop, ... it.")
@click.pass_obj
def share(obj: Context, ref: str, user: str, operate: bool) -> None:
    """Let another user (by access key) see a private instance of yours."""
    data = obj.client.share(ref, user, "operate" if operate else "read")
    emit_json(data) if obj.json else click.echo(f"{ref} shared with {user} ({data['access']})")


@instance.command("unshare")
@click.argument("ref")
@click.argument("user")
@click.pass_obj
def unshare(obj: Context, ref: str, user: str) -> None:
    """Take back a user's access to an instance."""
    data = obj.client.unshare(ref, user)
    emit_json(data) if obj.json else click.echo(f"{ref} no longer shared with {user}")


@instance.command("grants")
@click.argument("ref")
@click.pass_obj
def grants(obj: Context, ref: str) -> None:
    """Who an instance is shared with."""
    rows = obj.client.grants(ref)
    emit_json(rows) if obj.json else table(rows, ["user", "access", "created_at"])


def register(cli: click.Group) -> None:
    cli.add_command(instance)
