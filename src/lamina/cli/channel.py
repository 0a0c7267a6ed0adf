"""``lamina channel``: subscribe the manager to appliance channels (``add``, ``list``,
``refresh``, ``remove``). Publishing one (``keygen``, ``build``) runs locally, needs no manager,
and is added to this group by ``lamina.launcher.channel``."""

from __future__ import annotations

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, table


@click.group("channel")
def channel() -> None:
    """Appliance channels: signed RSS feeds of appliances."""


COLUMNS = ["id", "title", "url", "appliances", "fingerprint", "refreshed_at", "last_error"]


@channel.command("add")
@click.argument("url")
@click.option(
    "--key",
    required=True,
    help="The channel's public key token (ed25519:...), from its publisher: pinned.",
)
@click.pass_obj
def add(obj: Context, url: str, key: str) -> None:
    """Subscribe the manager to the channel whose feed is at URL (.../channel.rss)."""
    data = obj.client.add_channel(url, key)
    if obj.json:
        emit_json(data)
        return
    click.echo(f"subscribed to {data['title']} ({data['id']}), {data['appliances']} appliances")
    table(obj.client.appliances(), ["name", "version", "kind", "label", "installed"])


@channel.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """List the subscribed channels."""
    rows = obj.client.channels()
    emit_json(rows) if obj.json else table(rows, COLUMNS)


@channel.command("refresh")
@click.argument("channel_id")
@click.pass_obj
def refresh(obj: Context, channel_id: str) -> None:
    """Fetch a channel's feed again now; show what is new or updated."""
    data = obj.client.refresh_channel(channel_id)
    if obj.json:
        emit_json(data)
    elif data["changes"]:
        table(data["changes"], ["name", "version", "change"])
    else:
        click.echo("no new or updated appliances")


@channel.command("remove")
@click.argument("channel_id")
@click.pass_obj
def remove(obj: Context, channel_id: str) -> None:
    """Unsubscribe (refused while appliances installed from the channel remain)."""
    data = obj.client.remove_channel(channel_id)
    emit_json(data) if obj.json else click.echo(f"removed channel {data['url']}")


def register(cli: click.Group) -> None:
    cli.add_command(channel)
