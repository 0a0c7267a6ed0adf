"""``lamina user`` (VISOR's ``visor-admin``, table 4.18) and ``lamina whoami``."""

from __future__ import annotations

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, record, table
from lamina.client import QUOTAS

COLUMNS = ["access_key", "email", "role", "created_at", "updated_at"]


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
    """User accounts and their keys (administrators only)."""


@user.command("list")
@click.option("--query", "-q", help="Filter, as an HTTP query: role=admin&email=a@b.c")
@click.pass_obj
def list_(obj: Context, query: str | None) -> None:
    """Show every user account (or those matching --query)."""
    from urllib.parse import parse_qsl

    rows = obj.client.users(**dict(parse_qsl(query or "")))
    emit_json(rows) if obj.json else table(rows, COLUMNS)


@user.command("get")
@click.argument("access_key")
@click.pass_obj
def get(obj: Context, access_key: str) -> None:
    """Show one user account, its quotas and its keys (never their secrets)."""
    data = obj.client.user(access_key)
    if obj.json:
        emit_json(data)
        return
    record(data)
    for name, value in data["quotas"].items():
        click.echo(f"quota {name:<12} {'-' if value is None else value}")
    click.echo("")
    table(data["keys"], ["id", "active", "created_at", "revoked_at"])


@_quota_options
@user.command("add")
@click.argument("access_key")
@click.option("--email", "-e", required=True)
@click.option("--role", type=click.Choice(["member", "admin"]), default="member", show_default=True)
@click.pass_obj
def add(obj: Context, /, access_key: str, email: str, role: str, **quotas: int | None) -> None:
    """Register a user; prints their secret key, this once."""
    result = obj.client.add_user(access_key, email, role, _quotas(quotas))
    if obj.json:
        emit_json(result)
        return
    click.echo(f"user {access_key} added; its secret key (shown only now):")
    click.echo(f"  key id     {result['key']['id']}")
    click.echo(f"  secret key {result['key']['secret']}")


@_quota_options
@user.command("update")
@click.argument("access_key")
@click.option("--access", "-a", "new_access_key", help="A new access key (renames the user).")
@click.option("--email", "-e")
@click.option("--role", type=click.Choice(["member", "admin"]))
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
    """Change a user's access key, email, role, quotas or password."""
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
    """Delete a user account (refused while it owns instances)."""
    data = obj.client.delete_user(access_key)
    emit_json(data) if obj.json else click.echo(f"user {data['access_key']} deleted")


@user.command("clean")
@click.confirmation_option(prompt="Delete every user who owns nothing, except you?")
@click.pass_obj
def clean(obj: Context) -> None:
    """Delete every user account that owns nothing, except your own."""
    removed = obj.client.clean_users()
    emit_json(removed) if obj.json else click.echo(f"deleted: {', '.join(removed) or 'none'}")


@user.group("key")
def key() -> None:
    """A user's secret keys: several may be active, so keys rotate without downtime."""


@key.command("create")
@click.argument("access_key")
@click.pass_obj
def key_create(obj: Context, access_key: str) -> None:
    """Give a user another secret key; prints it, this once."""
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
    """Revoke one of a user's keys; requests signed with it are refused from now on."""
    data = obj.client.revoke_key(access_key, key_id)
    emit_json(data) if obj.json else click.echo(f"key {data['id']} revoked")


@click.command("whoami")
@click.pass_obj
def whoami(obj: Context) -> None:
    """Who the manager thinks you are."""
    data = obj.client.whoami()
    emit_json(data) if obj.json else record(data)


def register(cli: click.Group) -> None:
    cli.add_command(user)
    cli.add_command(whoami)
