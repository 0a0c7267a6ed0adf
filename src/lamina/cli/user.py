"""``lamina user`` (VISOR's ``visor-admin``, table 4.18) and ``lamina whoami``."""

from __future__ import annotations

from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, record, table
from lamina.cli.verbs import alias
from lamina.client import QUOTAS

COLUMNS = ["access_key", "email", "role", "created_at", "updated_at"]
KEY_COLUMNS = ["id", "active", "created_at", "revoked_at"]


def _quota_options(command: click.Command) -> click.Command:
    for name in reversed(QUOTAS):
        flag = "--quota-" + name.replace("_", "-")
        command = click.option(flag, type=int, help=f"Quota: {name} (-1: no limit).")(command)
    return command


def _quotas(values: dict[str, int | None]) -> dict[str, int | None] | None:
    chosen = {q: values.get(f"quota_{q}") for q in QUOTAS}
    picked = {q: (None if v == -1 else v) for q, v in chosen.items() if v is not None}
    return picked or None


@click.group("user")
def user() -> None:
    """User accounts and their keys (administrators only).

    \b
    Examples:
      lamina user list
      lamina user add alice --email alice@example.org
    """


@user.command("list")
@click.option("--query", "-q", help="Filter, as an HTTP query: role=admin&email=a@b.c")
@click.pass_obj
def list_(obj: Context, query: str | None) -> None:
    """List every user account (or those matching --query). --json prints them for scripts.

    \b
    Examples:
      lamina user list
      lamina user list --query role=admin
    """
    from urllib.parse import parse_qsl

    rows = obj.client.users(**dict(parse_qsl(query or "")))
    emit_json(rows) if obj.json else table(rows, COLUMNS)


@user.command("show")
@click.argument("access_key")
@click.pass_obj
def show(obj: Context, access_key: str) -> None:
    """Show one user account, its quotas and its keys.

    ACCESS_KEY names the user; the keys' secrets are never shown. --json prints it for
    scripts.

    \b
    Examples:
      lamina user show alice
      lamina --json user show alice
    """
    data = obj.client.user(access_key)
    if obj.json:
        emit_json(data)
        return
    record(data)
    for name, value in data["quotas"].items():
        click.echo(f"quota {name:<12} {'-' if value is None else value}")
    click.echo("")
    table(data["keys"], KEY_COLUMNS)


@_quota_options
@user.command("add")
@click.argument("access_key")
@click.option("--email", "-e", required=True, help="The user's email address.")
@click.option(
    "--role",
    type=click.Choice(["member", "admin"]),
    default="member",
    show_default=True,
    help="member: their own resources; admin: everything.",
)
@click.pass_obj
def add(obj: Context, /, access_key: str, email: str, role: str, **quotas: int | None) -> None:
    """Register a user; prints their secret key, this once.

    The keys are printed as a profile ready to paste into the user's credentials file, and
    as the `lamina profile add` line that writes it.

    \b
    Examples:
      lamina user add alice --email alice@example.org
      lamina user add bob -e bob@example.org --role admin --quota-instances 10
    """
    result = obj.client.add_user(access_key, email, role, _quotas(quotas))
    if obj.json:
        emit_json(result)
        return
    secret = result["key"]["secret"]
    click.echo(f"user {access_key} added; its secret key (shown only now):")
    click.echo(f"  key id     {result['key']['id']}")
    click.echo(f"  secret key {secret}")
    click.echo("")
    _print_profile(obj, access_key, secret)


def _print_profile(obj: Context, access_key: str, secret: str) -> None:
    """The new keys as a profile for the user's credentials file, and as a command."""
    import shlex

    from lamina.client.credentials import Credentials, profile_block

    url, ca_file = obj.client.url, obj.client.ca_file
    creds = Credentials(access_key, secret, url, ca_file)
    click.echo("their profile, for ~/.config/lamina/credentials:")
    click.echo("")
    click.echo(profile_block(access_key, creds))
    # Without the secret: a command line lands in shell history; `profile add` asks for it.
    words = ["lamina", "profile", "add", access_key, "--access-key", access_key, "--url", url]
    words += ["--ca-file", ca_file] if ca_file else []
    click.echo("or, on their machine (it asks for the secret key):")
    click.echo("  " + shlex.join(words))


@_quota_options
@user.command("update")
@click.argument("access_key")
@click.option("--access", "-a", "new_access_key", help="A new access key (renames the user).")
@click.option("--email", "-e", help="A new email address.")
@click.option("--role", type=click.Choice(["member", "admin"]), help="A new role.")
@click.option("--password", is_flag=True, help="Set a web password (prompted).")
@click.pass_obj
def update(
    obj: Context,
    /,
    access_key: str,
    new_access_key: str | None,
    email: str | None,
    role: str | None,
    password: bool,
    **quotas: int | None,
) -> None:
    """Change a user's access key, email, role, quotas or password.

    \b
    Examples:
      lamina user update alice --quota-instances 20
      lamina user update alice --password
    """
    secret = (
        click.prompt("password", hide_input=True, confirmation_prompt=True) if password else None
    )
    data = obj.client.update_user(
        access_key,
        access_key=new_access_key,
        email=email,
        role=role,
        quotas=_quotas(quotas),
        password=secret,
    )
    emit_json(data) if obj.json else record(data)


@user.command("delete")
@click.argument("access_key")
@click.pass_obj
def delete(obj: Context, access_key: str) -> None:
    """Delete a user account (refused while it owns instances).

    \b
    Examples:
      lamina user delete alice
    """
    data = obj.client.delete_user(access_key)
    emit_json(data) if obj.json else click.echo(f"user {data['access_key']} deleted")


@user.command("clean")
@click.confirmation_option(prompt="Delete every user who owns nothing, except you?")
@click.pass_obj
def clean(obj: Context) -> None:
    """Delete every user account that owns nothing, except your own.

    \b
    Examples:
      lamina user clean
      lamina user clean --yes
    """
    removed = obj.client.clean_users()
    emit_json(removed) if obj.json else click.echo(f"deleted: {', '.join(removed) or 'none'}")


@user.group("key")
def key() -> None:
    """A user's secret keys, rotated without downtime.

    Several keys may be active at once: add one, move the clients to it, revoke the old.

    \b
    Examples:
      lamina user key list alice
      lamina user key create alice
    """


@key.command("list")
@click.argument("access_key")
@click.pass_obj
def key_list(obj: Context, access_key: str) -> None:
    """List a user's keys (never their secrets).

    Each key's id, whether it is active, when it was made and revoked. --json prints them
    for scripts.

    \b
    Examples:
      lamina user key list alice
    """
    keys = obj.client.user(access_key)["keys"]
    emit_json(keys) if obj.json else table(keys, KEY_COLUMNS)


@key.command("show")
@click.argument("access_key")
@click.argument("key_id")
@click.pass_obj
def key_show(obj: Context, access_key: str, key_id: str) -> None:
    """Show one of a user's keys (never its secret). --json prints it for scripts.

    \b
    Examples:
      lamina user key show alice 3
    """
    from lamina.errors import NotFound

    keys: list[dict[str, Any]] = obj.client.user(access_key)["keys"]
    found = next((k for k in keys if str(k["id"]) == key_id), None)
    if found is None:
        raise NotFound(f"user {access_key!r} has no key {key_id!r}")
    emit_json(found) if obj.json else record(found)


@key.command("create")
@click.argument("access_key")
@click.pass_obj
def key_create(obj: Context, access_key: str) -> None:
    """Give a user another secret key; prints it, this once.

    \b
    Examples:
      lamina user key create alice
    """
    data = obj.client.create_key(access_key)
    if obj.json:
        emit_json(data)
        return
    click.echo(f"key id     {data['id']}")
    click.echo(f"secret key {data['secret']}")


@key.command("revoke")
@click.argument("access_key")
@click.argument("key_id")
@click.pass_obj
def key_revoke(obj: Context, access_key: str, key_id: str) -> None:
    """Revoke one of a user's keys.

    Requests signed with it are refused from now on.

    \b
    Examples:
      lamina user key revoke alice 3
    """
    data = obj.client.revoke_key(access_key, key_id)
    emit_json(data) if obj.json else click.echo(f"key {data['id']} revoked")


@click.command("whoami")
@click.pass_obj
def whoami(obj: Context) -> None:
    """Who the manager thinks you are, and whose keys you use.

    Also where the keys came from (a profile of the credentials file, or the environment)
    and the manager's URL. --json prints it for scripts.

    \b
    Examples:
      lamina whoami
      LAMINA_PROFILE=alice lamina whoami
    """
    data = obj.client.whoami()
    data["credentials"] = obj.client.credentials_source
    data["manager_url"] = obj.client.url
    emit_json(data) if obj.json else record(data)


alias(user, "get", of="show", why="the older name")


def register(cli: click.Group) -> None:
    cli.add_command(user)
    cli.add_command(whoami)
