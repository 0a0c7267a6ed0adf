"""``lamina appliance``: the catalog of the subscribed channels; install, deploy, capture and
remove."""

from __future__ import annotations

import click

from lamina.cli.context import Context
from lamina.cli.network import nic_options, nics, show_nics
from lamina.cli.output import emit_json, record, table, wait_job
from lamina.errors import Conflict, InvalidRequest, NotFound

COLUMNS = ["name", "version", "kind", "label", "installed", "status", "id", "channel"]


@click.group("appliance")
def appliance() -> None:
    """Appliances from the subscribed channels."""


@appliance.command("list")
@click.option("--installed", is_flag=True, help="Only the installed appliances.")
@click.pass_obj
def list_(obj: Context, installed: bool) -> None:
    """List the appliances of every channel, and the installed ones."""
    rows = obj.client.appliances(installed=installed)
    emit_json(rows) if obj.json else table(rows, COLUMNS)


@appliance.command("install")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def install(obj: Context, ref: str, wait: bool) -> None:
    """Install an appliance (its newest version unless VERSION is given) and its
    dependencies: download and verify their files into the image repository."""
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
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_context
def upgrade(ctx: click.Context, name: str, wait: bool) -> None:
    """Install the newest version of an installed appliance. For an OS substrate, its
    layered instances move onto it the next time they start; the older version stays
    installed (and in use) until removed."""
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
            raise InvalidRequest(f"--var {pair!r}: write it as name=value")
        values[key] = value
    return values


@appliance.command("deploy")
@click.argument("ref", metavar="NAME_OR_ID")
@click.option("--name", "instance_name", required=True, help="The new instance's name.")
@click.option("--var", "pairs", multiple=True, metavar="NAME=VALUE", help="Instance variable.")
@click.option("--memory", type=int, help="MiB (default: the appliance's <hardware>).")
@click.option("--vcpus", type=int, help="Default: the appliance's <hardware>.")
@nic_options
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def deploy(
    obj: Context,
    ref: str,
    instance_name: str,
    pairs: tuple[str, ...],
    memory: int | None,
    vcpus: int | None,
    networks: tuple[str, ...],
    ips: tuple[str, ...],
    no_network: bool,
    group: str | None,
    wait: bool,
) -> None:
    """Create an instance of an installed appliance: a layered one boots its substrate with
    the read-only layers shared on the host and a writable instance layer of its own; a
    traditional one boots from a qcow2 overlay on its disk image, cached once per host."""
    result = obj.client.deploy_appliance(
        ref, instance_name, _vars(pairs), memory_mib=memory, vcpus=vcpus,
        networks=nics(networks, ips, no_network), group=group,
    )  # fmt: skip
    job = wait_job(obj, result["job"], f"deploying {ref} as {instance_name}", wait)
    data = obj.client.instance(result["instance"]["id"]) if wait else result["instance"]
    if obj.json:
        emit_json({**result, "instance": data, "job": job})
    else:
        record(data)
        show_nics(data)


@appliance.command("capture")
@click.argument("instance")
@click.option("--as", "name", required=True, help="The new appliance's name.")
@click.option("--version", default=None, help="The new appliance's version (default 1.0.0).")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def capture(obj: Context, instance: str, name: str, version: str | None, wait: bool) -> None:
    """Turn the configuration made inside a stopped layered INSTANCE (its instance layer,
    less logs, caches and rendered templates) into a deployment layer, installed as a new
    appliance that deploys with that configuration."""
    result = obj.client.capture_appliance(instance, name, version)
    job = wait_job(obj, result["job"], f"capturing {instance} as {name}", wait)
    if obj.json:
        emit_json({"job": job, "appliance": result["appliance"]})
        return
    click.echo(f"captured {instance} as {name} {result['appliance']['version']}")
    click.echo(f"job {job['id']}: {job['status']}")


@appliance.command("remove")
@click.argument("appliance_id")
@click.pass_obj
def remove(obj: Context, appliance_id: str) -> None:
    """Remove an installed appliance and the images only it used (refused while an
    instance uses them)."""
    data = obj.client.remove_appliance(appliance_id)
    emit_json(data) if obj.json else click.echo(f"removed {data['name']} {data['version']}")


def register(cli: click.Group) -> None:
    cli.add_command(appliance)
