"""``lamina instance``: create, act on, watch and delete instances."""

from __future__ import annotations

import time
from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.network import nic_options, nics, show_nics
from lamina.cli.output import emit_json, record, table, wait_job
from lamina.errors import InvalidRequest

COLUMNS = ["name", "id", "status", "host", "vcpus", "memory_mib"]


@click.group("instance")
def instance() -> None:
    """Virtual machines."""


@instance.command("create")
@click.argument("name")
@click.option("--vcpus", type=int, default=1, show_default=True)
@click.option("--memory", type=int, default=256, show_default=True, help="MiB")
@click.option(
    "--kernel",
    help="Kernel: an image (id or name), an http(s):// URL, or (administrators, inside "
    "compute.boot_paths) a host path.",
)
@click.option("--initrd", help="Initramfs, same forms as --kernel.")
@click.option("--cmdline", default="console=ttyS0", show_default=True)
@click.option("--disk-image", help="Boot disk image (qcow2/raw), used as a copy-on-write base.")
@click.option("--disk-size", type=int, help="Root disk size in MiB.")
@click.option("--host", help="Place on this host instead of letting the scheduler choose.")
@click.option("--public", is_flag=True, help="Let every user see it (read-only).")
@nic_options
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
    networks: tuple[str, ...],
    ips: tuple[str, ...],
    no_network: bool,
    group: str | None,
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
        networks=nics(networks, ips, no_network),
        group=group,
    )
    wait_job(obj, result["job"], f"creating {name}", wait)
    show_instance(
        obj, obj.client.instance(result["instance"]["id"]) if wait else result["instance"]
    )


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
    """Show one instance (by id or name): with its networks and published ports."""
    show_instance(obj, obj.client.instance(ref), obj.client.forwards(ref))


def show_instance(
    obj: Context, data: dict[str, Any], forwards: list[dict[str, Any]] | None = None
) -> None:
    if obj.json:
        emit_json(data if forwards is None else {**data, "forwards": forwards})
        return
    record(data)
    show_nics(data)
    for forward in forwards or []:
        click.echo(
            f"forward   {forward['address'] or '-'} -> {forward['guest']} ({forward['status']})"
        )
    for name, value in sorted((data.get("config") or {}).items()):
        click.echo(f"config    {name}={value}")


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


@instance.command("expose")
@click.argument("ref")
@click.option("--port", "guest_port", type=int, required=True, help="The guest's TCP port.")
@click.option("--host-port", type=int, help="The host's port (default: a free one).")
@click.option("--bind", default="127.0.0.1", show_default=True, help="The host address.")
@click.option("--network", help="Which of its networks' addresses (default: its primary).")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def expose(
    obj: Context, ref: str, guest_port: int, host_port: int | None, bind: str,
    network: str | None, wait: bool,
) -> None:  # fmt: skip
    """Publish a TCP port of an instance on its host, on 127.0.0.1 unless --bind says
    otherwise (like LXD's proxy devices or docker -p)."""
    result = obj.client.expose(ref, guest_port, host_port, bind, network)
    wait_job(obj, result["job"], f"publishing port {guest_port} of {ref}", wait)
    forward = next(
        (f for f in obj.client.forwards(ref) if f["id"] == result["forward"]["id"]),
        result["forward"],
    )
    if obj.json:
        emit_json(forward)
    else:
        click.echo(f"{forward['address'] or '(choosing a port)'} -> {forward['guest']}")


@instance.command("unexpose")
@click.argument("ref")
@click.option("--port", "guest_port", required=True, help="The guest port (or forward id).")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def unexpose(obj: Context, ref: str, guest_port: str, wait: bool) -> None:
    """Stop publishing a port of an instance."""
    result = obj.client.unexpose(ref, guest_port)
    job = wait_job(obj, result["job"], f"withdrawing port {guest_port} of {ref}", wait)
    emit_json(job) if obj.json else click.echo(f"unexpose: {job['status']} (job {job['id']})")


@instance.command("forwards")
@click.argument("ref")
@click.pass_obj
def forwards(obj: Context, ref: str) -> None:
    """The ports an instance publishes on its host."""
    rows = obj.client.forwards(ref)
    emit_json(rows) if obj.json else table(rows, ["address", "guest", "status", "error", "id"])


@instance.command("config")
@click.argument("ref")
@click.argument("pairs", nargs=-1, metavar="[NAME=VALUE]...")
@click.option("--unset", multiple=True, metavar="NAME", help="Remove an item.")
@click.pass_obj
def config(obj: Context, ref: str, pairs: tuple[str, ...], unset: tuple[str, ...]) -> None:
    """Show, set or remove an instance's configuration items (what it reads from the
    configuration service at lamina.local)."""
    items: dict[str, str | None] = {name: None for name in unset}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            raise InvalidRequest(f"{pair!r}: write NAME=VALUE")
        items[name] = value
    current = obj.client.update_config(ref, items) if items else obj.client.instance(ref)["config"]
    if obj.json:
        emit_json(current)
    else:
        for name, value in sorted(current.items()):
            click.echo(f"{name}={value}")


def register(cli: click.Group) -> None:
    cli.add_command(instance)
