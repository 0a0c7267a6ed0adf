"""``lamina appliance``: the catalog of the subscribed channels; show, install, deploy,
capture and remove."""

from __future__ import annotations

from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.flags import api_fields
from lamina.cli.instance import show_instance
from lamina.cli.network import nic_options, nics
from lamina.cli.output import emit_json, record, table, wait_job
from lamina.errors import Conflict, Forbidden, InvalidState, NotFound

#: The listing's columns: names, not ids (``--json`` has the ids).
COLUMNS = ["name", "version", "kind", "label", "installed", "status", "channel"]
VERSION_HELP = "The version (default: the newest installed, else the newest offered)."


@click.group("appliance")
def appliance() -> None:
    """Appliances from the subscribed channels.

    List and show what they offer, install, deploy as instances, capture, remove.

    \b
    Examples:
      lamina appliance list
      lamina appliance deploy webserv --name web
    """


def _listed(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "channel": row.get("channel_title") or row.get("channel")}


@appliance.command("list")
@click.option("--installed", is_flag=True, help="Only the installed appliances.")
@click.pass_obj
def list_(obj: Context, installed: bool) -> None:
    """List the appliances every channel offers and the installed ones: name, version, kind,
    whether installed, and the channel's title. --json prints them with their ids and
    channel ids, for scripts.

    \b
    Examples:
      lamina appliance list
      lamina appliance list --installed --json
    """
    rows = obj.client.appliances(installed=installed)
    emit_json(rows) if obj.json else table([_listed(r) for r in rows], COLUMNS)


@appliance.command("show")
@click.argument("ref", metavar="NAME")
@click.option("--version", default=None, help=VERSION_HELP)
@click.pass_obj
def show(obj: Context, ref: str, version: str | None) -> None:
    """Show an appliance (by name, or an installed one's id): its versions, offered and
    installed, and for one version its description, dependencies, substrate, variables
    (type, default, whether required), ports, hardware and web panel. --json prints it all.

    \b
    Examples:
      lamina appliance show dnsserv
      lamina appliance show dnsserv --version 1.0.0-1 --json
    """
    data = obj.client.appliance(ref, version)
    if obj.json:
        emit_json(data)
        return
    hardware = data.get("hardware") or {}
    record(
        {
            "name": data["name"],
            "label": data.get("label"),
            "version": data["version"],
            "kind": data["kind"],
            "installed": "yes" if data["installed"] else "no",
            "channel": data.get("channel_title") or data.get("channel"),
            "description": data.get("description") or "-",
            "provides": ", ".join(data.get("provides") or []) or "-",
            "dependencies": ", ".join(data.get("dependencies") or []) or "-",
            "substrate": data.get("substrate"),
            "cpus": hardware.get("cpus"),
            "memory_mib": hardware.get("memory_mib"),
            "webpanel": data.get("webpanel"),
        }
    )
    if data.get("definition_error"):
        click.echo(f"definition not available: {data['definition_error']}")
    click.echo("\nversions:")
    versions = [
        {**v, "installed": "yes" if v["installed"] else "no",
         "channel": v.get("channel_title") or v.get("channel")}
        for v in data["versions"]
    ]  # fmt: skip
    table(versions, ["version", "installed", "status", "channel"])
    if "variables" in data:
        click.echo("\nvariables:")
        variables = [{**v, "required": "yes" if v["required"] else "no"} for v in data["variables"]]
        table(variables, ["name", "type", "default", "required", "description"])
    if "ports" in data:
        # A port numbered by a variable names it; its number is the variable's default, if any.
        click.echo("\nports:")
        ports = [{**p, "port": p["number"]} for p in data["ports"]]
        table(ports, ["port", "protocol", "variable", "name", "description"])


@appliance.command("install")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow the install job with a progress bar until it ends.",
)
@click.pass_obj
def install(obj: Context, ref: str, wait: bool) -> None:
    """Install an appliance (its newest version unless VERSION is given) and its
    dependencies: download and verify their files into the image repository. --json prints
    the job and the appliances installed, for scripts.

    \b
    Examples:
      lamina appliance install dnsserv
      lamina appliance install dnsserv:1.0.0-1 --no-wait
    """
    name, _, version = ref.partition(":")
    result = obj.client.install_appliance(name, version or None)
    job = wait_job(obj, result["job"], f"installing {ref}", wait)
    if obj.json:
        emit_json({"job": job, "appliances": result["appliances"]})
        return
    table(result["appliances"], ["name", "version", "kind", "id"])
    click.echo(f"job {job['id']}: {job['status']}")


@appliance.command("upgrade")
@click.argument("name")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow the install job with a progress bar until it ends.",
)
@click.pass_context
def upgrade(ctx: click.Context, name: str, wait: bool) -> None:
    """Install the newest version of an installed appliance. For an OS substrate, its
    layered instances move onto it the next time they start; the older version stays
    installed (and in use) until removed. --json prints the job, for scripts.

    \b
    Examples:
      lamina appliance upgrade lamina-base
    """
    obj: Context = ctx.obj
    rows = obj.client.appliances(installed=True)
    if not any(a["name"] == name and a["status"] == "installed" for a in rows):
        raise NotFound(f"{name} is not installed; install it with: lamina appliance install {name}")
    try:
        ctx.invoke(install, ref=name, wait=wait)
    except Conflict as exc:
        if exc.code != "conflict":
            raise
        raise Conflict(f"{name} is up to date: {exc.message}") from None


def _vars(pairs: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: write it as NAME=VALUE", param_hint="--var")
        values[key] = value
    return values


@appliance.command("deploy")
@click.argument("ref", metavar="NAME_OR_ID")
@click.option("--name", "instance_name", required=True, help="The new instance's name.")
@click.option(
    "--version", default=None, help="The appliance's version (default: the newest installed)."
)
@click.option(
    "--var",
    "pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="An instance variable (repeat it; lamina appliance show NAME lists them).",
)
@click.option(
    "--memory",
    type=click.IntRange(32, 1024 * 1024),
    help="Memory in MiB (default: the appliance's <hardware>, else 256).",
)
@click.option(
    "--vcpus",
    type=click.IntRange(1, 64),
    help="vCPUs (default: the appliance's <hardware>, else 1).",
)
@nic_options
@click.option(
    "--install/--no-install",
    default=True,
    show_default=True,
    help="Install the appliance first if a channel offers it but it is not installed.",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow the jobs with a progress bar until the instance runs.",
)
@click.pass_obj
@api_fields(memory_mib="--memory", vars="--var", name="--name", networks="--network")
def deploy(
    obj: Context,
    ref: str,
    instance_name: str,
    version: str | None,
    pairs: tuple[str, ...],
    memory: int | None,
    vcpus: int | None,
    networks: tuple[str, ...],
    ips: tuple[str, ...],
    no_network: bool,
    group: str | None,
    install: bool,
    wait: bool,
) -> None:
    """Create an instance of an appliance: a layered one boots its substrate with the
    read-only layers shared on the host and a writable instance layer of its own; a
    traditional one boots from a qcow2 overlay on its disk image, cached once per host.
    An appliance a channel offers that is not installed yet is installed first (as an
    image is pulled), unless --no-install. --json prints the instance, its job and the
    resolved variables, for scripts.

    \b
    Examples:
      lamina appliance deploy dnsserv --name dns1 --var domain=www.example.org
      lamina appliance deploy legacy-wiki --version 1.0.0-0 --name w1 --no-install
    """

    def create() -> dict[str, Any]:
        return obj.client.deploy_appliance(
            ref, instance_name, _vars(pairs), memory_mib=memory, vcpus=vcpus,
            networks=nics(networks, ips, no_network, group), group=group, version=version,
        )  # fmt: skip

    try:
        result = create()
    except InvalidState as exc:
        if not exc.details.get("installable") or not install:
            raise
        _install_first(obj, ref, version)
        result = create()
    job = wait_job(obj, result["job"], f"deploying {ref} as {instance_name}", wait)
    data = obj.client.instance(result["instance"]["id"]) if wait else result["instance"]
    if obj.json:
        emit_json({**result, "instance": data, "job": job})
    else:
        show_instance(obj, data)


def _install_first(obj: Context, ref: str, version: str | None) -> None:
    """Install what a deploy needs, with the install's progress bar (on stderr)."""
    at = f":{version}" if version else ""
    if not obj.json:
        click.echo(f"{ref}{at} is not installed: installing it first", err=True)
    try:
        started = obj.client.install_appliance(ref, version)
    except Forbidden:
        raise Forbidden(
            f"{ref}{at} is not installed, and only an administrator may install it: ask one "
            f"to run lamina appliance install {ref}{at}"
        ) from None
    wait_job(obj, started["job"], f"installing {ref}{at}", True)


@appliance.command("capture")
@click.argument("instance")
@click.option("--as", "name", required=True, help="The new appliance's name.")
@click.option("--version", default=None, help="The new appliance's version (default 1.0.0).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow the capture job with a progress bar until it ends.",
)
@click.pass_obj
def capture(obj: Context, instance: str, name: str, version: str | None, wait: bool) -> None:
    """Turn the configuration made inside a stopped layered INSTANCE (its instance layer,
    less logs, caches and rendered templates) into a deployment layer, installed as a new
    appliance that deploys with that configuration. --json prints the job and the new
    appliance, for scripts.

    \b
    Examples:
      lamina appliance capture web1 --as mysite --version 1.0.1
    """
    result = obj.client.capture_appliance(instance, name, version)
    job = wait_job(obj, result["job"], f"capturing {instance} as {name}", wait)
    if obj.json:
        emit_json({"job": job, "appliance": result["appliance"]})
        return
    click.echo(f"captured {instance} as {name} {result['appliance']['version']}")
    click.echo(f"job {job['id']}: {job['status']}")


@appliance.command("remove")
@click.argument("ref", metavar="NAME_OR_ID")
@click.option("--version", default=None, help="Which installed version (needed when several are).")
@click.pass_obj
def remove(obj: Context, ref: str, version: str | None) -> None:
    """Remove an installed appliance (by name, or id) and the images only it used (refused
    while an instance uses them). --json prints the removed appliance, for scripts.

    \b
    Examples:
      lamina appliance remove dnsserv
      lamina appliance remove lamina-base --version 1.0.0
    """
    data = obj.client.remove_appliance(ref, version)
    emit_json(data) if obj.json else click.echo(f"removed {data['name']} {data['version']}")


def register(cli: click.Group) -> None:
    cli.add_command(appliance)
