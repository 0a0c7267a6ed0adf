"""``lamina profile``: the keys this machine signs with, as profiles of the credentials file
(``lamina.client.credentials``). Local: no manager is asked, and no secret is ever printed."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, record, table


@click.group("profile")
def profile() -> None:
    """Your keys: profiles of the credentials file.

    The file is ~/.config/lamina/credentials (or $LAMINA_CREDENTIALS); $LAMINA_PROFILE picks
    the profile the other commands sign with (default: "default").

    \b
    Examples:
      lamina profile list
      lamina profile add alice --access-key alice --url http://127.0.0.1:8775
    """


def _rows() -> tuple[Path, list[dict[str, Any]]]:
    from lamina.client.credentials import credentials_path, profile_name, read_profiles

    path, current = credentials_path(), profile_name()
    current_name: str | None = current
    if os.environ.get("LAMINA_ACCESS_KEY") and os.environ.get("LAMINA_SECRET_KEY"):
        current_name = None  # the environment's keys win over every profile
    rows = [
        {
            "name": name,
            "access_key": values.get("access_key"),
            "url": values.get("url"),
            "ca_file": values.get("ca_file"),
            "current": name == current_name,
        }
        for name, values in read_profiles(path).items()
    ]
    return path, rows


@profile.command("add")
@click.argument("name")
@click.option("--access-key", required=True, help="The user's access key (their name).")
@click.option(
    "--secret-key",
    help="The secret key (default: asked for without echo, or one line read from a pipe; "
    "prefer either to the command line).",
)
@click.option("--url", help="The manager's URL, with http:// or https://.")
@click.option("--ca-file", help="CA certificate an HTTPS manager's certificate must chain to.")
@click.pass_obj
def add(
    obj: Context,
    name: str,
    access_key: str,
    secret_key: str | None,
    url: str | None,
    ca_file: str | None,
) -> None:
    """Write the profile NAME into the credentials file.

    The file is written with mode 0600; other profiles are kept, one of that name is
    replaced. The secret key is asked for (without echo) unless --secret-key gives it.

    \b
    Examples:
      lamina profile add alice --access-key alice --url http://127.0.0.1:8775
      LAMINA_PROFILE=alice lamina whoami
    """
    from lamina.client.credentials import (
        Credentials,
        check_url,
        credentials_path,
        write_credentials,
    )
    from lamina.errors import InvalidRequest

    if url is not None:
        try:
            check_url(url, "--url")
        except InvalidRequest as exc:
            raise click.UsageError(exc.message) from None
    if secret_key is None and not sys.stdin.isatty():
        # Piped in (`pass show lamina | lamina profile add ...`): nothing to hide it from.
        secret_key = sys.stdin.readline().strip()
        if not secret_key:
            raise click.UsageError("no secret key on standard input")
    if secret_key is None:
        secret_key = click.prompt("secret key", hide_input=True, err=True)
    path = credentials_path()
    write_credentials(path, name, Credentials(access_key, secret_key, url, ca_file))
    if obj.json:
        emit_json({"profile": name, "file": str(path), "access_key": access_key, "url": url})
        return
    click.echo(f"profile {name} written to {path}")
    if name != "default":
        click.echo(f"use it with: LAMINA_PROFILE={name} lamina whoami")


@profile.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """List the profiles of the credentials file (never their secrets).

    Name, access key, URL and CA file of each; CURRENT marks the one $LAMINA_PROFILE picks
    (none when LAMINA_ACCESS_KEY and LAMINA_SECRET_KEY are set). --json prints them for
    scripts.

    \b
    Examples:
      lamina profile list
      lamina --json profile list
    """
    path, rows = _rows()
    if obj.json:
        emit_json(rows)
        return
    table(rows, ["name", "access_key", "url", "ca_file", "current"])
    if not rows:
        click.echo(f"(no profile in {path}: add one with `lamina profile add NAME`)")


@profile.command("show")
@click.argument("name", required=False)
@click.pass_obj
def show(obj: Context, name: str | None) -> None:
    """Show one profile, without its secret.

    NAME defaults to the current profile ($LAMINA_PROFILE, else "default"). --json prints it
    for scripts.

    \b
    Examples:
      lamina profile show
      lamina profile show alice
    """
    from lamina.client.credentials import profile_name
    from lamina.errors import NotFound

    path, rows = _rows()
    wanted = name or profile_name()
    found = next((r for r in rows if r["name"] == wanted), None)
    if found is None:
        names = ", ".join(r["name"] for r in rows) or "none"
        raise NotFound(f"no profile {wanted!r} in {path} (profiles there: {names})")
    data = {**found, "file": str(path)}
    emit_json(data) if obj.json else record(data)


def register(cli: click.Group) -> None:
    cli.add_command(profile)
