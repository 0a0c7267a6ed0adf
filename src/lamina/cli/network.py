"""``lamina network``: virtual networks (their addresses are Lamina's; DHCP and DNS by
dnsmasq on each host)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, record, table, wait_job

COLUMNS = ["name", "cidr", "mode", "zone", "instances", "visibility", "vlan", "id"]


@click.group("network")
def network() -> None:
    """Virtual networks (docs/networks.md)."""


@network.command("create")
@click.argument("name")
@click.option("--cidr", required=True, help="Its IPv4 range, e.g. 10.20.0.0/24.")
@click.option(
    "--nat", "mode", flag_value="nat", default=True, help="Guests reach outside (default)."
)
@click.option("--isolated", "mode", flag_value="isolated", help="Guests reach only each other.")
@click.option("--public", is_flag=True, help="Let every user attach instances to it.")
@click.option("--vlan", type=int, help="802.1Q tag between hosts (administrators).")
@click.option("--description", default="")
@click.pass_obj
def create(
    obj: Context, name: str, cidr: str, mode: str, public: bool, vlan: int | None,
    description: str,
) -> None:  # fmt: skip
    """Create a network. Its first address is the gateway; its instances are named
    <instance>.<NAME>.<cloud domain>."""
    data = obj.client.create_network(
        name, cidr, mode=mode, visibility="public" if public else "private", vlan=vlan,
        description=description,
    )  # fmt: skip
    emit_json(data) if obj.json else record(data)


@network.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """The networks you may use."""
    rows = obj.client.networks()
    emit_json(rows) if obj.json else table(rows, COLUMNS)


@network.command("show")
@click.argument("ref")
@click.pass_obj
def show(obj: Context, ref: str) -> None:
    """One network and the addresses in use on it."""
    data = obj.client.network(ref)
    if obj.json:
        emit_json(data)
        return
    record(data)
    click.echo("")
    table(data["addresses"], ["ip", "kind", "name", "mac"])


@network.command("update")
@click.argument("ref")
@click.option("--visibility", type=click.Choice(["private", "public"]))
@click.option("--description")
@click.pass_obj
def update(obj: Context, ref: str, visibility: str | None, description: str | None) -> None:
    """Make a network public (every user may attach to it) or private; owners only."""
    data = obj.client.update_network(ref, visibility=visibility, description=description)
    emit_json(data) if obj.json else record(data)


@network.command("delete")
@click.argument("ref")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def delete(obj: Context, ref: str, wait: bool) -> None:
    """Delete a network no instance uses."""
    job = wait_job(obj, obj.client.delete_network(ref), f"deleting network {ref}", wait)
    emit_json(job) if obj.json else click.echo(f"delete: {job['status']} (job {job['id']})")


@click.group("dns")
def dns() -> None:
    """DNS records of the networks' zones."""


@dns.group("record")
def dns_record() -> None:
    """Records of a network's zone: Lamina's own (instances, groups, mail) and yours."""


@dns_record.command("list")
@click.option("--network", required=True, help="The network whose zone to list.")
@click.pass_obj
def record_list(obj: Context, network: str) -> None:
    """Every record of the network's zone, with where it comes from."""
    rows = obj.client.dns_records(network)
    emit_json(rows) if obj.json else table(rows, ["name", "type", "value", "source", "id"])


@dns_record.command("add")
@click.argument("name")
@click.argument("type_", metavar="TYPE", type=click.Choice(
    ["A", "AAAA", "MX", "CNAME", "TXT", "SRV"], case_sensitive=False))  # fmt: skip
@click.argument("value", nargs=-1, required=True)
@click.option("--network", required=True, help="The network whose zone gets it.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def record_add(
    obj: Context, name: str, type_: str, value: tuple[str, ...], network: str, wait: bool
) -> None:
    """Add a record. NAME is relative to the zone unless it ends with '.' (@ is the zone).
    VALUE: A/AAAA an address; CNAME a name; TXT text; MX '<preference> <exchange>';
    SRV '<priority> <weight> <port> <target>'."""
    result = obj.client.add_dns_record(network, name, type_.upper(), " ".join(value))
    for job in result["jobs"]:
        wait_job(obj, job, f"telling host {job['target_id']}", wait)
    emit_json(result["record"]) if obj.json else record(result["record"])


@dns_record.command("delete")
@click.argument("record_id")
@click.option("--network", required=True)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def record_delete(obj: Context, record_id: str, network: str, wait: bool) -> None:
    """Delete a record you added (by its id, from ``dns record list``)."""
    result = obj.client.delete_dns_record(network, record_id)
    for job in result["jobs"]:
        wait_job(obj, job, f"telling host {job['target_id']}", wait)
    emit_json(result["record"]) if obj.json else click.echo(f"deleted {record_id}")


def register(cli: click.Group) -> None:
    cli.add_command(network)
    cli.add_command(dns)


F = TypeVar("F", bound=Callable[..., Any])


def nic_options(command: F) -> F:
    """``--network`` (repeatable, in order: the first is the primary), ``--ip`` (repeatable:
    the address on the network given at the same position) and ``--no-network``."""
    options = (
        click.option("--network", "networks", multiple=True, metavar="NAME[:ADDRESS]",
                     help="A network to join, optionally at a static address (repeat for "
                     "several, the first is the primary; default: the default network)."),
        click.option("--ip", "ips", multiple=True, metavar="ADDRESS",
                     help="A static address on the --network at the same position."),
        click.option("--no-network", is_flag=True, help="No network at all."),
        click.option("--group", help="Share the round-robin name <group>.<network>.<domain>."),
    )  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def nics(
    networks: tuple[str, ...], ips: tuple[str, ...], no_network: bool
) -> list[dict[str, str | None]] | None:
    """The request's ``networks``: None lets the default network apply."""
    if no_network:
        if networks or ips:
            raise click.UsageError("--no-network cannot go with --network or --ip")
        return []
    if len(ips) > len(networks):
        raise click.UsageError("each --ip needs a --network before it (one --ip per --network)")
    if not networks:
        return None
    padded: list[str | None] = [*ips, *[None] * (len(networks) - len(ips))]
    nics: list[dict[str, str | None]] = []
    for given, ip in zip(networks, padded, strict=True):
        name, colon, address = given.partition(":")
        if colon and ip:
            raise click.UsageError(f"--network {given} has an address already; drop its --ip")
        nics.append({"network": name, "ip": address if colon else ip})
    return nics


def show_nics(data: dict[str, object]) -> None:
    """An instance's networks, one line each, after its record."""
    for nic in data.get("networks") or []:  # type: ignore[attr-defined]
        static = " (static)" if nic.get("static") else ""
        click.echo(f"network   {nic['network']}: {nic['ip']}{static} {nic['fqdn']} {nic['mac']}")
