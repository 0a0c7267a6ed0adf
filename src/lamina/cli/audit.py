"""``lamina audit``: the record of state-changing requests (administrators only)."""

from __future__ import annotations

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, table

COLUMNS = ["at", "access_key", "method", "path", "status", "outcome", "remote_addr"]
TIME_HELP = "ISO 8601 (2026-01-02T03:04:05Z) or a span back from now: 30m, 1h, 2d."


@click.group("audit")
def audit() -> None:
    """Who changed what, when, from where, with what result."""


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
    """Show recorded requests, newest first."""
    events = obj.client.audit(
        user=user,
        since=since,
        until=until,
        method=method.upper() if method else None,
        limit=limit,
    )
    emit_json(events) if obj.json else table(events, COLUMNS)


def register(cli: click.Group) -> None:
    cli.add_command(audit)
