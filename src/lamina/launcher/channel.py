"""``lamina channel keygen`` and ``lamina channel build``: publish an appliance channel. Both run
locally on the publisher's files and need no manager, so they are no client commands; the
launcher adds them to the client's ``lamina channel`` group."""

from __future__ import annotations

from pathlib import Path

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, table


@click.command("keygen")
@click.argument("keyfile", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def keygen(obj: Context, keyfile: Path) -> None:
    """Make a channel's Ed25519 key pair.

    KEYFILE (private, 0600) and KEYFILE.pub. Local: needs no manager. --json prints the
    key's files and fingerprint for scripts.

    \b
    Examples:
      lamina channel keygen ~/channel.key
    """
    from lamina.channels.signing import fingerprint, generate_key, public_key_text

    key = generate_key(keyfile)
    data = {
        "private_key": str(keyfile),
        "public_key": public_key_text(key),
        "fingerprint": fingerprint(key),
    }
    if obj.json:
        emit_json(data)
        return
    click.echo(f"private key  {keyfile} (keep it secret)")
    click.echo(f"public key   {data['public_key']} (also in {keyfile}.pub)")
    click.echo(f"fingerprint  {data['fingerprint']}")


@click.command("build")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the channel into (served as it is by any HTTP server).",
)
@click.option(
    "--key",
    "keyfile",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The channel's private key (from lamina channel keygen).",
)
@click.option(
    "--base-url",
    "base_urls",
    multiple=True,
    help="URL of a mirror that will serve OUT; repeat for several, in order of preference.",
)
@click.option("--title", help="The channel's title (default: the SOURCE folder's name).")
@click.pass_obj
def build(
    obj: Context,
    source: Path,
    out: Path,
    keyfile: Path,
    base_urls: tuple[str, ...],
    title: str | None,
) -> None:
    """Build a signed channel from a folder of appliance sources.

    One folder per appliance version. Local: needs no manager. --json prints the feed's
    items for scripts.

    \b
    Examples:
      lamina channel build samples/channel --out /srv/channel --key ~/channel.key
      lamina channel build src --out out --key k --base-url https://mirror.example.org/c
    """
    from lamina.channels.build import FEED, build_channel
    from lamina.channels.signing import load_private_key

    feed = build_channel(source, out, load_private_key(keyfile), base_urls, title)
    rows = [
        {
            "name": item.name,
            "version": str(item.version),
            "kind": item.kind,
            "files": len(item.files),
            "bytes": sum(f.size for f in item.files),
            "definition": item.definition.sha256,
        }
        for item in feed.items
    ]
    if obj.json:
        emit_json({"feed": str(out / FEED), "public_key": feed.public_key, "items": rows})
        return
    table(rows, ["name", "version", "kind", "files", "bytes", "definition"])
    click.echo(f"\nfeed: {out / FEED} (signed by {feed.public_key})")
