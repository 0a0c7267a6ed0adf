"""``lamina host``: register hosts and see their capacity."""

from __future__ import annotations

from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.flags import api_fields
from lamina.cli.output import emit_json, record, table, wait_job
from lamina.cli.verbs import alias
from lamina.errors import LaminaError

COLUMNS = [
    "name",
    "status",
    "disabled",
    "address",
    "vcpus",
    "vcpus_used",
    "memory_mib",
    "memory_used_mib",
    "instances",
    "domain_type",
    "last_heartbeat",
]


@click.group("host")
def host() -> None:
    """Hypervisor hosts and their agents (administrators only; docs/hosts.md).

    \b
    Examples:
      lamina host list
      lamina host disable h2 --reason "DIMM to replace"
    """


@host.command("add")
@click.argument("name")
@click.option("--address", required=True, help="HOST:PORT where the host's agent will listen.")
@click.option(
    "--reserved-memory",
    type=click.IntRange(min=0),
    help="MiB kept for the host itself (default from the settings).",
)
@api_fields(reserved_memory_mib="--reserved-memory")
@click.pass_obj
def add(obj: Context, name: str, address: str, reserved_memory: int | None) -> None:
    """Register a host and print its agent's one-time enrolment token.

    Also prints the `lamina agent` command line to start the agent with.

    \b
    Examples:
      lamina host add h2 --address 192.0.2.12:8776
      lamina --json host add h2 --address 192.0.2.12:8776 --reserved-memory 2048
    """
    result = obj.client.add_host(name, address, reserved_memory)
    if obj.json:
        emit_json(result)
        return
    click.echo(f"host {name} registered; its one-time enrolment token (valid 24 h):")
    click.echo(f"  {result['token']}")
    click.echo("start its agent with:")
    click.echo(f"  lamina agent --manager {obj.client.url} --enrol {result['token']}")


@host.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """List hosts: status, capacity and use, last heartbeat. --json prints them for
    scripts.

    DISABLED is "no", or "yes" with the reason given to `lamina host disable`.

    \b
    Examples:
      lamina host list
      lamina --json host list
    """
    hosts = obj.client.hosts()
    emit_json(hosts) if obj.json else table([_shown(h) for h in hosts], COLUMNS)


@host.command("show")
@click.argument("ref")
@click.pass_obj
def show(obj: Context, ref: str) -> None:
    """Show one host (by name or id). --json prints it for scripts.

    \b
    Examples:
      lamina host show h1
    """
    data = obj.client.host(ref)
    emit_json(data) if obj.json else record(data)


@host.command("token")
@click.argument("ref")
@click.pass_obj
def token(obj: Context, ref: str) -> None:
    """Issue a new enrolment token for a host.

    For re-enrolling a rebuilt host.

    \b
    Examples:
      lamina host token h2
    """
    value = obj.client.host_token(ref)
    emit_json({"token": value}) if obj.json else click.echo(value)


@host.command("disable")
@click.argument("ref")
@click.option("--reason", help="Why, shown in `host list` and `host show` (one line).")
@click.pass_obj
def disable(obj: Context, ref: str, reason: str | None) -> None:
    """Place no new instance on a host (nor move one to it).

    What it runs keeps running; `lamina host evacuate` moves it away. Naming the host with
    `instance create --host` is refused until `lamina host enable`.

    \b
    Examples:
      lamina host disable h2 --reason "memory errors, DIMM to replace"
      lamina host enable h2
    """
    data = obj.client.disable_host(ref, reason)
    if obj.json:
        emit_json(data)
        return
    running = data["instances"]
    click.echo(
        f"host {data['name']} disabled: no new instances; it still runs {running} instance(s)"
    )


@host.command("enable")
@click.argument("ref")
@click.pass_obj
def enable(obj: Context, ref: str) -> None:
    """Let the scheduler place instances on a disabled host again.

    \b
    Examples:
      lamina host enable h2
    """
    data = obj.client.enable_host(ref)
    emit_json(data) if obj.json else click.echo(f"host {data['name']} enabled")


@host.command("remove")
@click.argument("ref")
@click.pass_obj
def remove(obj: Context, ref: str) -> None:
    """Forget a host that runs no instance.

    \b
    Examples:
      lamina host remove h2
    """
    data = obj.client.remove_host(ref)
    emit_json(data) if obj.json else click.echo(f"host {data['name']} removed")


@host.command("evacuate")
@click.argument("ref")
@click.option(
    "--wait/--no-wait", default=True, show_default=True,
    help="Wait for every instance to have moved, then print the report.",
)  # fmt: skip
@click.pass_obj
def evacuate(obj: Context, ref: str, wait: bool) -> None:
    """Move every instance of a host to other hosts (live if it runs, cold if stopped).

    Prints what moved where and what could not move, and why. Disable the host first
    (lamina host disable) so that nothing new is placed on it meanwhile.

    
    Examples:
      lamina host evacuate h2
      lamina --json host evacuate h2 --no-wait
    """
    job = wait_job(obj, obj.client.evacuate_host(ref), f"evacuating {ref}", False)
    if wait:
        job = obj.client.wait_job(job["id"])
    if obj.json:
        emit_json(job)
        return
    result = job.get("result") or {}
    report = result.get("report") or []
    if not wait:
        click.echo(f"evacuating {ref}: job {job['id']}")
        return
    rows = [
        {
            "instance": r.get("name"),
            "outcome": r.get("outcome"),
            "mode": r.get("mode", ""),
            "host": r.get("host") or "",
            "reason": r.get("reason") or "",
        }
        for r in report
    ]
    table(rows, ["instance", "outcome", "mode", "host", "reason"])
    click.echo(result.get("summary") or f"evacuation {job['status']}")
    if job["status"] != "succeeded":
        raise LaminaError(f"host.evacuate {job['status']}: {job['error']} (job {job['id']})")


alias(host, "delete", of="remove", why="as in the other groups")


def _shown(host: dict[str, Any]) -> dict[str, Any]:
    """A host as its table row shows it: DISABLED with its reason."""
    reason = host.get("disabled_reason")
    disabled = ("yes: " + reason if reason else "yes") if host.get("disabled") else "no"
    return host | {"disabled": disabled}


def register(cli: click.Group) -> None:
    cli.add_command(host)
