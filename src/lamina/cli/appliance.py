"""``lamina appliance``: the catalog of the subscribed channels; install and remove."""

from __future__ import annotations

import click

from lamina.cli.main import Context
from lamina.cli.output import ProgressBar, emit_json, table
from lamina.errors import LaminaError

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
    job = result["job"]
    if wait:
        bar = ProgressBar(f"installing {ref}")
        job = obj.client.wait_job(job["id"], on_progress=bar)
        bar.done()
        if job["status"] != "succeeded":
            raise LaminaError(f"{job['kind']} {job['status']}: {job['error']} (job {job['id']})")
    if obj.json:
        emit_json({"job": job, "appliances": result["appliances"]})
        return
    table(result["appliances"], ["name", "version", "kind", "id"])
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
