"""``lamina reconcile``: compare the database with what the hosts run, and fix on request."""

from __future__ import annotations

from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json, record, table

COLUMNS = ["id", "kind", "resource", "database", "backend", "fix"]


class _Reconcile(click.Group):
    """Keeps the older form, ``lamina reconcile --fix ID...``, as ``lamina reconcile fix
    ID...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args[:1] == ["--fix"]:
            args = ["fix", *args[1:]]
        return super().parse_args(ctx, args)


@click.group("reconcile", cls=_Reconcile, invoke_without_command=True)
@click.pass_context
def reconcile(ctx: click.Context) -> None:
    """Compare the database with what the hosts really run.

    Without a subcommand, a dry run (as `list`): each difference with its ID and the fix it
    would get. Review it, then `lamina reconcile fix ID...` applies the fixes of those IDs
    only, and only if each difference is found again unchanged; anything else is left alone.
    (`lamina reconcile --fix ID...` is the older form of `fix`.)

    \b
    Examples:
      lamina reconcile
      lamina reconcile fix 3f2a9c1e
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_)


def _differences(obj: Context) -> list[dict[str, Any]]:
    return obj.client.reconcile()


@reconcile.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """List the differences between the database and the hosts.

    A dry run: nothing is changed. --json prints them for scripts.

    \b
    Examples:
      lamina reconcile list
      lamina --json reconcile list
    """
    diffs = _differences(obj)
    if obj.json:
        emit_json(diffs)
    elif not diffs:
        click.echo("no differences: the database matches the hosts")
    else:
        table(diffs, COLUMNS)


@reconcile.command("show")
@click.argument("diff_id", metavar="ID")
@click.pass_obj
def show(obj: Context, diff_id: str) -> None:
    """Show one difference and the fix it would get.

    ID is from `lamina reconcile list`. --json prints it for scripts.

    \b
    Examples:
      lamina reconcile show 3f2a9c1e
    """
    from lamina.errors import NotFound

    found = next((d for d in _differences(obj) if d["id"] == diff_id), None)
    if found is None:
        raise NotFound(f"no difference {diff_id!r} (gone, or fixed): see `lamina reconcile`")
    emit_json(found) if obj.json else record(found)


@reconcile.command("fix")
@click.argument("ids", nargs=-1, metavar="ID...")
@click.pass_obj
def fix(obj: Context, ids: tuple[str, ...]) -> None:
    """Fix the differences named by ID, from a dry run.

    Each is fixed only if it is still there unchanged; prints each one's outcome. --json
    prints them for scripts.

    \b
    Examples:
      lamina reconcile fix 3f2a9c1e
      lamina reconcile fix 3f2a9c1e 77d0b2aa
    """
    if not ids:
        raise click.UsageError(
            "name the differences to fix: run `lamina reconcile`, review, then "
            "`lamina reconcile fix ID...` with the IDs it showed"
        )
    diffs = obj.client.reconcile(fix=list(ids))
    if obj.json:
        emit_json(diffs)
    elif not diffs:
        click.echo("no differences: the database matches the hosts")
    else:
        table(diffs, COLUMNS + ["outcome"])


def register(cli: click.Group) -> None:
    cli.add_command(reconcile)
