"""``lamina reconcile``: compare the database with what the hosts run, and fix on request."""

from __future__ import annotations

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, table


@click.command("reconcile")
@click.option(
    "--fix",
    is_flag=True,
    help="Fix the differences named by ID (from a dry run), if still there unchanged.",
)
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.pass_obj
def reconcile(obj: Context, fix: bool, ids: tuple[str, ...]) -> None:
    """Compare the database with what the hosts really run.

    Without --fix, a dry run: each difference with its ID and the fix it would get. Review
    it, then `lamina reconcile --fix ID...` applies the fixes of those IDs only, and only
    if each difference is found again unchanged; anything else is left alone."""
    if ids and not fix:
        raise click.UsageError("IDs are for --fix: lamina reconcile --fix ID...")
    if fix and not ids:
        raise click.UsageError(
            "name the differences to fix: run `lamina reconcile`, review, then "
            "`lamina reconcile --fix ID...` with the IDs it showed"
        )
    diffs = obj.client.reconcile(fix=list(ids) if fix else None)
    if obj.json:
        emit_json(diffs)
        return
    if not diffs:
        click.echo("no differences: the database matches the hosts")
        return
    columns = ["id", "kind", "resource", "database", "backend", "fix"]
    table(diffs, columns + (["outcome"] if fix else []))


def register(cli: click.Group) -> None:
    cli.add_command(reconcile)
