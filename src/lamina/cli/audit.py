"""``lamina audit``: the record of state-changing requests (administrators only)."""

from __future__ import annotations

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, record, table

COLUMNS = ["at", "access_key", "method", "path", "status", "outcome", "remote_addr"]
TIME_HELP = "ISO 8601 (2026-01-02T03:04:05Z) or a span back from now: 30m, 1h, 2d."


@click.group("audit")
def audit() -> None:
    """Who changed what, when, from where, with what result.

    Administrators only.

    \b
    Examples:
      lamina audit list --since 1h
      lamina audit show 42
    """


@audit.command("list")
@click.option("--user", "-u", help="Only requests by (or claiming) this access key.")
@click.option("--since", "-s", help=f"Only requests made at or after this time: {TIME_HELP}")
@click.option("--until", help=f"Only requests made before this time: {TIME_HELP}")
@click.option(
    "--method",
    "-m",
    type=click.Choice(["POST", "PUT", "PATCH", "DELETE"], case_sensitive=False),
    help="Only requests with this method.",
)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="At most this many events.",
)
@click.pass_obj
def list_(
    obj: Context,
    user: str | None,
    since: str | None,
    until: str | None,
    method: str | None,
    limit: int,
) -> None:
    """List recorded requests, newest first. --json prints them for scripts.

    \b
    Examples:
      lamina audit list --since 1h
      lamina audit list --user alice --method DELETE
    """
    events = obj.client.audit(
        user=user,
        since=since,
        until=until,
        method=method.upper() if method else None,
        limit=limit,
    )
    emit_json(events) if obj.json else table(events, COLUMNS)


@audit.command("show")
@click.argument("event_id", type=click.IntRange(min=1), metavar="ID")
@click.pass_obj
def show(obj: Context, event_id: int) -> None:
    """Show one recorded request.

    ID is from `lamina audit list`; shows also its request id and duration. --json prints
    it for scripts.

    \b
    Examples:
      lamina audit show 42
    """
    data = obj.client.audit_event(event_id)
    emit_json(data) if obj.json else record(data)


def register(cli: click.Group) -> None:
    cli.add_command(audit)
