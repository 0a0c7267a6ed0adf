"""``lamina network``: virtual networks (their addresses are Lamina's; DHCP and DNS by
dnsmasq on each host)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from lamina.cli.context import Context
from lamina.cli.flags import api_fields
from lamina.cli.output import emit_json, record, table, wait_job

COLUMNS = ["name", "cidr", "mode", "zone", "instances", "visibility", "vlan", "id"]
#: A TCP port, as ``instance expose`` takes them.
PORT = click.IntRange(1, 65535)
WAIT_HELP = "Wait for the job to finish (--no-wait: print it and return)."


@click.group("network")
def network() -> None:
    """Virtual networks (docs/networks.md).

    \b
    Examples:
      lamina network create lan --cidr 10.20.0.0/24
      lamina network list
    """


@network.command("create")
@click.argument("name")
@click.option("--cidr", required=True, help="Its IPv4 range, e.g. 10.20.0.0/24.")
@click.option("--nat", is_flag=True, help="Guests reach outside, through NAT (the default).")
@click.option("--isolated", is_flag=True, help="Guests reach only each other (not with --nat).")
@click.option("--public", is_flag=True, help="Let every user attach instances to it.")
@click.option(
    "--vlan",
    type=click.IntRange(1, 4094),
    help="802.1Q tag between hosts (1-4094; administrators).",
)
@click.option("--description", default="", help="Free text shown with the network.")
@click.pass_obj
@api_fields(mode="--nat/--isolated", visibility="--public")
def create(
    obj: Context, name: str, cidr: str, nat: bool, isolated: bool, public: bool,
    vlan: int | None, description: str,
) -> None:  # fmt: skip
    """Create a network. Its first address is the gateway; its instances are named
    <instance>.<NAME>.<cloud domain>. It prints the network (--json: as JSON, for scripts).

    \b
    Examples:
      lamina network create lan --cidr 10.20.0.0/24
      lamina network create backend --cidr 10.30.0.0/24 --isolated --public
    """
    if nat and isolated:
        raise click.UsageError(
            "--nat and --isolated contradict each other: a network either reaches outside "
            "(--nat) or not (--isolated); give one"
        )
    mode = "isolated" if isolated else "nat"
    data = obj.client.create_network(
        name, cidr, mode=mode, visibility="public" if public else "private", vlan=vlan,
        description=description,
    )  # fmt: skip
    emit_json(data) if obj.json else record(data)


@network.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """The networks you may use (--json: as JSON, for scripts).

    \b
    Examples:
      lamina network list
      lamina --json network list
    """
    rows = obj.client.networks()
    emit_json(rows) if obj.json else table(rows, COLUMNS)


@network.command("show")
@click.argument("ref")
@click.pass_obj
def show(obj: Context, ref: str) -> None:
    """One network (by name or id) and the addresses in use on it (--json: as JSON, for
    scripts).

    \b
    Examples:
      lamina network show lan
    """
    data = obj.client.network(ref)
    if obj.json:
        emit_json(data)
        return
    record(data)
    click.echo("")
    table(data["addresses"], ["ip", "kind", "name", "mac"])


@network.command("update")
@click.argument("ref")
@click.option(
    "--visibility",
    type=click.Choice(["private", "public"]),
    help="public: every user may attach instances to it; private: its owner and admins.",
)
@click.option("--description", help="New free text shown with the network.")
@click.pass_obj
def update(obj: Context, ref: str, visibility: str | None, description: str | None) -> None:
    """Make a network public (every user may attach to it) or private, or change its
    description; owners only. It prints the network (--json: as JSON, for scripts).

    \b
    Examples:
      lamina network update lan --visibility public
    """
    if visibility is None and description is None:
        raise click.UsageError("nothing to change: give --visibility or --description")
    data = obj.client.update_network(ref, visibility=visibility, description=description)
    emit_json(data) if obj.json else record(data)


@network.command("delete")
@click.argument("ref")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def delete(obj: Context, ref: str, wait: bool) -> None:
    """Delete a network (by name or id) that no instance uses (--json prints the job, for
    scripts).

    \b
    Examples:
      lamina network delete lan
    """
    job = wait_job(obj, obj.client.delete_network(ref), f"deleting network {ref}", wait)
    emit_json(job) if obj.json else click.echo(f"delete: {job['status']} (job {job['id']})")


@click.group("dns")
def dns() -> None:
    """DNS records of the networks' zones.

    \b
    Examples:
      lamina dns record list --network lan
    """


@dns.group("record")
def dns_record() -> None:
    """Records of a network's zone: Lamina's own (instances, groups, mail) and yours.

    \b
    Examples:
      lamina dns record list --network lan
      lamina dns record add www CNAME web --network lan
    """


RECORD_COLUMNS = ["name", "type", "value", "source", "id"]


@dns_record.command("list")
@click.option("--network", required=True, help="The network (name or id) whose zone to list.")
@click.pass_obj
def record_list(obj: Context, network: str) -> None:
    """Every record of the network's zone, with where it comes from (--json: as JSON, for
    scripts).

    \b
    Examples:
      lamina dns record list --network lan
    """
    rows = obj.client.dns_records(network)
    emit_json(rows) if obj.json else table(rows, RECORD_COLUMNS)


@dns_record.command("show")
@click.argument("ref")
@click.option("--network", required=True, help="The network (name or id) whose zone has it.")
@click.pass_obj
def record_show(obj: Context, ref: str, network: str) -> None:
    """The records of the network's zone with this id, or this name (relative to the zone
    unless it ends with '.', @ the zone itself); --json prints them as JSON, for scripts.

    \b
    Examples:
      lamina dns record show www --network lan
    """
    zone = obj.client.network(network)["zone"]
    full = ref.rstrip(".") if ref.endswith(".") else zone if ref == "@" else f"{ref}.{zone}"
    rows = [r for r in obj.client.dns_records(network) if ref == r.get("id") or full == r["name"]]
    if not rows:
        raise click.BadParameter(f"network {network} has no record {ref!r}", param_hint="REF")
    emit_json(rows) if obj.json else table(rows, RECORD_COLUMNS)


@dns_record.command("add")
@click.argument("name")
@click.argument("type_", metavar="TYPE", type=click.Choice(
    ["A", "AAAA", "MX", "CNAME", "TXT", "SRV"], case_sensitive=False))  # fmt: skip
@click.argument("value", nargs=-1, required=True)
@click.option("--network", required=True, help="The network (name or id) whose zone gets it.")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
@api_fields(type="TYPE")
def record_add(
    obj: Context, name: str, type_: str, value: tuple[str, ...], network: str, wait: bool
) -> None:
    """Add a record. NAME is relative to the zone unless it ends with '.' (@ is the zone).
    VALUE: A/AAAA an address; CNAME a name; TXT text; MX '<preference> <exchange>';
    SRV '<priority> <weight> <port> <target>'. --json prints the record, for scripts.

    \b
    Examples:
      lamina dns record add www CNAME web --network lan
      lamina dns record add @ MX 10 mail.lan.lamina.internal --network lan
    """
    result = obj.client.add_dns_record(network, name, type_.upper(), " ".join(value))
    for job in result["jobs"]:
        wait_job(obj, job, f"telling host {job['target_id']}", wait)
    emit_json(result["record"]) if obj.json else record(result["record"])


@dns_record.command("delete")
@click.argument("record_id")
@click.option("--network", required=True, help="The network (name or id) whose zone has it.")
@click.option("--wait/--no-wait", default=True, show_default=True, help=WAIT_HELP)
@click.pass_obj
def record_delete(obj: Context, record_id: str, network: str, wait: bool) -> None:
    """Delete a record you added (by its id, from `dns record list`); --json prints the
    record, for scripts.

    \b
    Examples:
      lamina dns record delete rec-0123abcd --network lan
    """
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
    networks: tuple[str, ...], ips: tuple[str, ...], no_network: bool, group: str | None = None
) -> list[dict[str, str | None]] | None:
    """The request's ``networks``: None lets the default network apply. UsageError for
    flags that contradict each other (``group``: the ``--group`` given, if any)."""
    if no_network:
        if networks or ips:
            raise click.UsageError("--no-network cannot go with --network or --ip")
        if group is not None:
            raise click.UsageError(
                "--group cannot go with --no-network (a group's name is on its networks)"
            )
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
