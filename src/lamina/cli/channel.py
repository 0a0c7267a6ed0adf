"""``lamina channel``: subscribe the manager to appliance channels (``add``, ``list``,
``show``, ``refresh``, ``remove``). Publishing one (``keygen``, ``build``) runs locally,
needs no manager, and is added to this group by ``lamina.launcher.channel``."""

from __future__ import annotations

from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, record, table

REF = "CHANNEL"  # its id, title or feed URL


@click.group("channel")
def channel() -> None:
    """Appliance channels: signed RSS feeds of appliances. A channel is named by its id, its
    title or its feed's URL.

    \b
    Examples:
      lamina channel list
      lamina channel refresh https://apps.example.org/channel/feed.xml
    """


COLUMNS = ["title", "url", "appliances", "owner_key", "refreshed_at", "last_error"]


@channel.command("add")
@click.argument("url")
@click.option(
    "--key",
    required=True,
    help="The channel's public key token (ed25519:...), from its publisher: pinned.",
)
@click.pass_obj
def add(obj: Context, url: str, key: str) -> None:
    """Subscribe the manager to the channel whose feed is at URL (.../channel.rss), and list
    the appliances it offers. --json prints the channel, for scripts.

    \b
    Examples:
      lamina channel add http://127.0.0.1:8000/channel.rss --key ed25519:AAAA...
    """
    data = obj.client.add_channel(url, key)
    if obj.json:
        emit_json(data)
        return
    click.echo(f"subscribed to {data['title']} ({data['id']}), {data['appliances']} appliances")
    rows = [r for r in obj.client.appliances() if r.get("channel") == data["id"]]
    table(rows, ["name", "version", "kind", "label", "installed"])


@channel.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """List the subscribed channels: title, feed URL, how many appliances, who subscribed
    (administrators see it), last refresh and error. --json prints them with their ids, keys
    and fingerprints, for scripts.

    \b
    Examples:
      lamina channel list
      lamina channel list --json
    """
    rows = obj.client.channels()
    emit_json(rows) if obj.json else table(rows, COLUMNS)


def _shown(data: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "title", "url", "fingerprint", "appliances", "owner_key", "created_at",
            "refreshed_at", "last_error")  # fmt: skip
    return {k: data.get(k) for k in keep}


@channel.command("show")
@click.argument("ref", metavar=REF)
@click.pass_obj
def show(obj: Context, ref: str) -> None:
    """Show a channel (by id, title or feed URL) and the appliances its feed lists. --json
    prints it all, for scripts.

    \b
    Examples:
      lamina channel show sample
      lamina channel show http://127.0.0.1:8000/channel.rss --json
    """
    data = obj.client.channel(ref)
    if obj.json:
        emit_json(data)
        return
    record(_shown(data))
    click.echo("")
    table(data.get("items") or [], ["name", "version", "kind", "label"])


@channel.command("refresh")
@click.argument("ref", metavar=REF)
@click.pass_obj
def refresh(obj: Context, ref: str) -> None:
    """Fetch a channel's feed (by id, title or feed URL) again now; show what is new or
    updated. --json prints the channel and the changes, for scripts.

    \b
    Examples:
      lamina channel refresh sample
    """
    data = obj.client.refresh_channel(ref)
    if obj.json:
        emit_json(data)
    elif data["changes"]:
        table(data["changes"], ["name", "version", "change"])
    else:
        click.echo("no new or updated appliances")


@channel.command("remove")
@click.argument("ref", metavar=REF)
@click.pass_obj
def remove(obj: Context, ref: str) -> None:
    """Unsubscribe from a channel (by id, title or feed URL); refused while appliances
    installed from it remain. --json prints the channel removed, for scripts.

    \b
    Examples:
      lamina channel remove sample
    """
    data = obj.client.remove_channel(ref)
    emit_json(data) if obj.json else click.echo(f"removed channel {data['title']} ({data['url']})")


def register(cli: click.Group) -> None:
    cli.add_command(channel)
