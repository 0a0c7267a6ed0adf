"""``lamina instance``: create, act on, watch and delete instances."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from lamina.cli import checkpoint as checkpoint_commands
from lamina.cli.context import Context
from lamina.cli.flags import api_fields
from lamina.cli.network import PORT, nic_options, nics, show_nics
from lamina.cli.output import emit_json, human_bytes, record, table, wait_job

COLUMNS = ["name", "id", "status", "host", "vcpus", "memory_mib"]
#: The statuses ``instance list --status`` filters on: those the manager stores
#: (``lamina.compute.models.INSTANCE_STATUSES``; a test holds the two together).
STATUSES = ("building", "running", "paused", "stopped", "error", "deleting", "deleted")
#: The statuses in which an instance's guest may be alive: deleting it asks first
#: (``unknown``: its host is down, it may still run there).
ASK_BEFORE_DELETE = ("running", "paused", "unknown")
#: What busybox's init prints on a console before its shell, with no newline after it.
ASKFIRST = re.compile(r"Please press Enter to activate this console\. ?")
#: Follow mode shows a line that has not ended after this long (a prompt waiting for input).
PARTIAL_AFTER = 2.0
WAIT_HELP = "Wait for the job to finish, with a progress bar (--no-wait: print it and return)."


@click.group("instance")
def instance() -> None:
    """Virtual machines.

    Create, list, show, start and stop, watch the console, publish ports, delete.

    \b
    Examples:
      lamina instance list
      lamina instance show web
    """


@instance.command("create")
@click.argument("name")
@click.option(
    "--vcpus",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Virtual CPUs (1-64).",
)
@click.option(
    "--memory", type=click.IntRange(32, 1024 * 1024), default=256, show_default=True,
    help="Memory in MiB (32-1048576).",
)  # fmt: skip
@click.option(
    "--kernel",
    help="Kernel: an image (id or name), an http(s):// URL, or (administrators, inside "
    "compute.boot_paths) a host path.",
)
@click.option("--initrd", help="Initramfs, same forms as --kernel.")
@click.option(
    "--cmdline",
    default="console=ttyS0",
    show_default=True,
    help="The kernel's command line (with --kernel).",
)
@click.option(
    "--disk-image",
    help="Boot disk image (qcow2/raw; same forms as --kernel), used as a copy-on-write base.",
)
@click.option(
    "--disk-size",
    type=click.IntRange(1, 64 * 1024 * 1024),
    help="Root disk size in MiB (1-67108864; default: the disk image's).",
)
@click.option(
    "--host",
    help="Place on this host (name or id; administrators) instead of letting the scheduler choose.",
)
@click.option("--public", is_flag=True, help="Let every user see it (read-only).")
@nic_options
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
@api_fields(
    memory_mib="--memory", disk_size_mib="--disk-size", visibility="--public",
    networks="--network", group="--group",
)  # fmt: skip
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
    """Create and boot an instance, from a kernel (and initramfs) or a disk image. It prints
    the instance as `instance show` does (--json: as JSON, for scripts).

    \b
    Examples:
      lamina instance create web --disk-image debian-12 --memory 1024 --network lan
      lamina instance create tiny --kernel vmlinuz --initrd initrd.img --no-network
    """
    if kernel is None and disk_image is None:
        raise click.UsageError("give --kernel or --disk-image: what the instance boots from")
    if initrd is not None and kernel is None:
        raise click.UsageError("--initrd needs --kernel (an initramfs goes with a kernel)")
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
        networks=nics(networks, ips, no_network, group),
        group=group,
    )
    wait_job(obj, result["job"], f"creating {name}", wait)
    show_instance(
        obj, obj.client.instance(result["instance"]["id"]) if wait else result["instance"]
    )


@instance.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only instances in this status.")
@click.option("--host", help="Only instances on this host (name or id).")
@click.option("--detail", is_flag=True, help="Every field (with --json), and an error column.")
@click.pass_obj
def list_(obj: Context, status: str | None, host: str | None, detail: bool) -> None:
    """List the instances you may see, oldest first (--json prints them as JSON, for
    scripts).

    \b
    Examples:
      lamina instance list --status running
      lamina --json instance list --detail
    """
    rows = obj.client.instances(detail=detail, status=status, host=host)
    emit_json(rows) if obj.json else table(rows, COLUMNS + (["error"] if detail else []))


@instance.command("show")
@click.argument("ref")
@click.pass_obj
def show(obj: Context, ref: str) -> None:
    """Show one instance (by name or id): its owner and appliance by name, its networks,
    attached volumes and published ports (--json: all of it as JSON, for scripts).

    \b
    Examples:
      lamina instance show web
      lamina --json instance show web
    """
    data = obj.client.instance(ref)
    show_instance(obj, data, obj.client.forwards(data["id"]))


def show_instance(
    obj: Context, data: dict[str, Any], forwards: list[dict[str, Any]] | None = None
) -> None:
    if obj.json:
        emit_json(data if forwards is None else {**data, "forwards": forwards})
        return
    shown = dict(data)
    skip = ["owner_name"]
    if data.get("owner_name"):
        shown["owner"] = f"{data['owner_name']} ({data['owner']})"
    appliance = data.get("appliance")
    if appliance:
        shown["appliance"] = f"{appliance['name']} {appliance['version']} ({appliance['id']})"
        skip.append("appliance_id")
    record(shown, skip=tuple(skip))
    show_nics(data)
    for volume in data.get("volumes") or []:
        click.echo(f"volume    {volume['device']}: {volume_label(volume)} "
                   f"{human_bytes(volume['size_bytes'])} ({volume['status']})")  # fmt: skip
    for forward in forwards or []:
        click.echo(
            f"forward   {forward['address'] or '-'} -> {forward['guest']} ({forward['status']})"
        )
    for name, value in sorted((data.get("config") or {}).items()):
        click.echo(f"config    {name}={value}")


def volume_label(volume: dict[str, Any]) -> str:
    """``data (vol-…)``, the id alone if it has no name, or a placeholder for a volume the
    viewer may not see (a public instance's reader sees that it has a disk, not whose)."""
    if volume.get("name") and volume.get("id"):
        return f"{volume['name']} ({volume['id']})"
    return str(volume.get("id") or "(another user's volume)")


def _action(name: str, doc: str) -> click.Command:
    examples = (
        f"\b\nExamples:\n  lamina instance {name} web\n"
        f"  lamina --json instance {name} web --no-wait"
    )
    help_ = f"{doc} It prints the job's outcome (--json: the job, for scripts).\n\n{examples}"

    @click.command(name, help=help_)
    @click.argument("ref")
    @click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
    @click.pass_obj
    def command(obj: Context, ref: str, wait: bool, force: bool = False) -> None:
        job = wait_job(obj, obj.client.instance_action(ref, name, force), f"{name} {ref}", wait)
        if obj.json:
            emit_json(job)
        else:
            click.echo(f"{name}: {job['status']} (job {job['id']})")

    return command


def _stop() -> click.Command:
    command = _action(
        "stop", "Shut an instance down (by name or id; forced off after a grace period)."
    )
    return click.option(
        "--force", is_flag=True, help="Power off at once, without asking the guest."
    )(command)


for _name, _doc in (
    ("start", "Boot a stopped instance (by name or id)."),
    ("pause", "Freeze an instance's vCPUs (by name or id)."),
    ("resume", "Resume a paused instance (by name or id)."),
    ("reboot", "Reset a running instance (by name or id)."),
):
    instance.add_command(_action(_name, _doc))
instance.add_command(_stop())


@instance.command("migrate")
@click.argument("ref")
@click.option("--host", help="The destination host (default: the scheduler's choice).")
@click.option("--live", is_flag=True, help="Move it while it runs (it must be running or paused).")
@click.option(
    "--cold", is_flag=True,
    help="Move it stopped (a running instance is stopped, moved and started again).",
)  # fmt: skip
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def migrate(obj: Context, ref: str, host: str | None, live: bool, cold: bool, wait: bool) -> None:
    """Move an instance to another host (administrators only).

    By default live if it runs, cold if it is stopped. Its addresses, MAC, DNS names,
    forwards and volumes stay as they are; its instance layer moves with it.

    \b
    Examples:
      lamina instance migrate web
      lamina instance migrate web --host h2 --live
      lamina --json instance migrate web --cold --no-wait
    """
    if live and cold:
        raise click.UsageError("--live and --cold exclude each other: give one, or neither")
    mode = "live" if live else "cold" if cold else "auto"
    job = obj.client.migrate_instance(ref, host, mode)
    job = wait_job(obj, job, f"moving {ref}", wait)
    if obj.json:
        emit_json(job)
        return
    state = job.get("result") or {}
    if job["status"] != "succeeded":
        click.echo(f"migrate: {job['status']} (job {job['id']})")
        return
    figures = [
        f"{state['seconds']:.1f} s" if state.get("seconds") is not None else None,
        f"downtime {state['downtime_ms']} ms" if state.get("downtime_ms") is not None else None,
        f"memory {human_bytes(state.get('memory_bytes') or 0)}",
        f"disk {human_bytes(state.get('disk_bytes') or 0)}",
        f"layers fetched {human_bytes(state.get('layer_bytes') or 0)}",
    ]
    click.echo(f"{ref} now on {state.get('host')}: " + ", ".join(f for f in figures if f))


@instance.command("delete")
@click.argument("ref")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Do not ask before deleting a running (or paused) instance: what scripts give.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Delete the record even if the host is unreachable (implies --yes).",
)
@click.pass_obj
def delete(obj: Context, ref: str, wait: bool, yes: bool, force: bool) -> None:
    """Destroy an instance (by name or id) and its disks; its volumes are detached and kept.
    It prints the job's outcome (--json: the job, for scripts).

    A running, paused or unknown (host down) instance is deleted only once confirmed: on a
    terminal you are asked, naming its disks, volumes, published ports and addresses;
    elsewhere it is refused unless --yes is given (Incus likewise refuses a running
    instance without --force). A stopped instance is deleted without asking, as by Incus
    and `openstack server delete`.

    \b
    Examples:
      lamina instance delete web
      lamina instance delete web --yes --no-wait
    """
    data = obj.client.instance(ref)
    if data["status"] in ASK_BEFORE_DELETE and not (yes or force):
        what = "; ".join(destroyed(data, obj.client.forwards(data["id"])))
        question = f"instance {data['name']} is {data['status']}: deleting it destroys {what}"
        if not sys.stdin.isatty():
            raise click.UsageError(f"{question}. Give --yes (-y) to delete it.")
        click.confirm(f"{question}. Delete it?", abort=True, err=True)
    job = obj.client.delete_instance(data["id"], force)
    job = wait_job(obj, job, f"deleting {data['name']}", wait)
    emit_json(job) if obj.json else click.echo(f"delete: {job['status']} (job {job['id']})")


def destroyed(data: dict[str, Any], forwards: list[dict[str, Any]]) -> list[str]:
    """What deleting the instance ``data`` destroys or lets go, for a person to confirm."""
    size = data.get("disk_size_bytes")
    shown_size = human_bytes(size) if size else "its image's size"
    if data.get("layers") is not None:
        found = [f"its writable layer ({shown_size}) and configuration disk"]
    elif data.get("disk_image") or size:
        found = [f"its root disk ({shown_size})"]
    else:
        found = ["no disk (it boots from a kernel)"]
    found += [
        f"detaches volume {volume_label(v)} ({v['device']}, {human_bytes(v['size_bytes'])}; kept)"
        for v in data.get("volumes") or []
    ]
    found += [f"published port {f['address'] or '-'} -> {f['guest']}" for f in forwards]
    found += [f"address {n['ip']} on {n['network']}" for n in data.get("networks") or []]
    return found


@instance.command("console")
@click.argument("ref")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until interrupted.")
@click.pass_obj
def console(obj: Context, ref: str, follow: bool) -> None:
    """Print an instance's serial console log (read-only; by name or id). Lines are printed
    whole; busybox's "Please press Enter to activate this console." is left out, since
    nothing typed here reaches the guest. With --follow a line still unfinished after two
    seconds (a prompt) is shown as it is.

    \b
    Examples:
      lamina instance console web
      lamina instance console web -f
    """
    for text in console_lines(obj, ref, follow):
        click.echo(text, nl=False)


def console_lines(obj: Context, ref: str, follow: bool) -> Iterator[str]:
    """The console's text, whole lines at a time (``\n`` kept), without busybox's prompt.
    It reads until the log is exhausted; with ``follow`` it then polls, and yields a line
    that has stayed unfinished for PARTIAL_AFTER seconds as it stands."""
    offset, pending, since = 0, "", time.monotonic()
    while True:
        chunk = obj.client.console(ref, offset)
        offset = chunk["offset"]
        if chunk["data"]:
            *whole, pending = (pending + chunk["data"]).split("\n")
            for line in whole:
                yield from _shown(line + "\n")
            since = time.monotonic()
            continue
        if not follow:
            yield from _shown(pending)
            return
        if pending and time.monotonic() - since >= PARTIAL_AFTER:
            yield from _shown(pending)
            pending = ""
        time.sleep(0.5)


def _shown(text: str) -> Iterator[str]:
    """``text`` without busybox's prompt; nothing if that was all of it."""
    kept = ASKFIRST.sub("", text)
    if kept and (kept.strip() or not ASKFIRST.search(text)):
        yield kept


@instance.command("update")
@click.argument("ref")
@click.option(
    "--visibility",
    type=click.Choice(["private", "public"]),
    required=True,
    help="public: every user may see it (read-only); private: its owner, grantees, admins.",
)
@click.pass_obj
def update(obj: Context, ref: str, visibility: str) -> None:
    """Make an instance public (read-only to every user) or private; owners only. It prints
    the instance (--json: as JSON, for scripts).

    \b
    Examples:
      lamina instance update web --visibility public
    """
    data = obj.client.set_visibility(ref, visibility)
    emit_json(data) if obj.json else record(data)


@instance.command("share")
@click.argument("ref")
@click.argument("user")
@click.option("--operate", is_flag=True, help="Also let them start, stop, ... it.")
@click.pass_obj
@api_fields(access="--operate")
def share(obj: Context, ref: str, user: str, operate: bool) -> None:
    """Let another user (by access key) see a private instance of yours (--json prints the
    grant, for scripts).

    \b
    Examples:
      lamina instance share web alice --operate
    """
    data = obj.client.share(ref, user, "operate" if operate else "read")
    emit_json(data) if obj.json else click.echo(f"{ref} shared with {user} ({data['access']})")


@instance.command("unshare")
@click.argument("ref")
@click.argument("user")
@click.pass_obj
def unshare(obj: Context, ref: str, user: str) -> None:
    """Take back a user's access to an instance.

    \b
    Examples:
      lamina instance unshare web alice
    """
    data = obj.client.unshare(ref, user)
    emit_json(data) if obj.json else click.echo(f"{ref} no longer shared with {user}")


@instance.command("grants")
@click.argument("ref")
@click.pass_obj
def grants(obj: Context, ref: str) -> None:
    """Who an instance is shared with, and how (--json: as JSON, for scripts).

    \b
    Examples:
      lamina instance grants web
    """
    rows = obj.client.grants(ref)
    emit_json(rows) if obj.json else table(rows, ["user", "access", "created_at"])


@instance.command("expose")
@click.argument("ref")
@click.option(
    "--port", "guest_port", type=PORT, required=True, help="The guest's TCP port (1-65535)."
)
@click.option("--host-port", type=PORT, help="The host's port (1-65535; default: a free one).")
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    help="The host address to listen on (0.0.0.0: all of them); an address of the "
    "data-centre network that is no host's own floats: it follows the instance.",
)
@click.option("--network", help="Which of its networks' addresses (default: its primary).")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
@api_fields(guest_port="--port")
def expose(
    obj: Context, ref: str, guest_port: int, host_port: int | None, bind: str,
    network: str | None, wait: bool,
) -> None:  # fmt: skip
    """Publish a TCP port of an instance on its host, on 127.0.0.1 unless --bind says
    otherwise (like LXD's proxy devices or docker -p). It prints HOST:PORT -> GUEST:PORT
    (--json: the forward, for scripts).

    \b
    Examples:
      lamina instance expose web --port 80 --host-port 8080
      lamina instance expose web --port 22 --bind 0.0.0.0
      lamina instance expose web --port 80 --host-port 8080 --bind 10.98.0.200
    """
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
@click.option(
    "--port",
    "guest_port",
    required=True,
    help="The guest port (or the forward's id, from `instance forwards`).",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
@api_fields(forward="--port")
def unexpose(obj: Context, ref: str, guest_port: str, wait: bool) -> None:
    """Stop publishing a port of an instance (--json prints the job, for scripts).

    \b
    Examples:
      lamina instance unexpose web --port 80
    """
    result = obj.client.unexpose(ref, guest_port)
    job = wait_job(obj, result["job"], f"withdrawing port {guest_port} of {ref}", wait)
    emit_json(job) if obj.json else click.echo(f"unexpose: {job['status']} (job {job['id']})")


@instance.command("forwards")
@click.argument("ref")
@click.pass_obj
def forwards(obj: Context, ref: str) -> None:
    """The ports an instance publishes on its host (--json: as JSON, for scripts).

    \b
    Examples:
      lamina instance forwards web
    """
    rows = obj.client.forwards(ref)
    emit_json(rows) if obj.json else table(rows, ["address", "guest", "status", "error", "id"])


@instance.command("config")
@click.argument("ref")
@click.argument("pairs", nargs=-1, metavar="[NAME=VALUE]...")
@click.option("--unset", multiple=True, metavar="NAME", help="Remove an item (repeatable).")
@click.pass_obj
@api_fields(items="NAME=VALUE")
def config(obj: Context, ref: str, pairs: tuple[str, ...], unset: tuple[str, ...]) -> None:
    """Show, set or remove an instance's configuration items (what it reads from the
    configuration service at lamina.local); --json prints them as JSON, for scripts.

    \b
    Examples:
      lamina instance config web site=example.org
      lamina instance config web --unset site
    """
    items: dict[str, str | None] = {name: None for name in unset}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            raise click.BadParameter(f"{pair!r}: write NAME=VALUE", param_hint="NAME=VALUE")
        if name in unset:
            raise click.UsageError(f"{name} is both set ({pair}) and removed (--unset {name})")
        items[name] = value
    current = obj.client.update_config(ref, items) if items else obj.client.instance(ref)["config"]
    if obj.json:
        emit_json(current)
    else:
        for name, value in sorted(current.items()):
            click.echo(f"{name}={value}")


def register(cli: click.Group) -> None:
    cli.add_command(instance)


# Checkpoints (lamina.cli.checkpoint): `instance checkpoint ...` and `instance restore`.
instance.add_command(checkpoint_commands.checkpoint)
instance.add_command(checkpoint_commands.restore)
