"""``lamina``: the command line. Each command group lives in its own module.

Every command here is a client of the manager's REST API. The commands that run the manager
or the agent, or work on this machine's files (``serve``, ``agent``, ``config``, ``user
bootstrap``, ``channel keygen``/``build``) are added by ``lamina.launcher``, which builds the
``lamina`` console command from the group here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from lamina import __version__
from lamina.cli import (
    appliance,
    audit,
    channel,
    host,
    image,
    instance,
    job,
    network,
    reconcile,
    snapshot,
    user,
    volume,
)
from lamina.cli.context import Context
from lamina.errors import LaminaError


class Group(click.Group):
    """Turns any LaminaError into one clear line on stderr; exit code 2 for a bad request
    (HTTP 400), 1 for any other error."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LaminaError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(2 if exc.status == 400 else 1)


@click.group(cls=Group)
@click.option("--url", envvar="LAMINA_URL", help="Manager URL (default from the settings).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.version_option(__version__, prog_name="lamina")
@click.pass_context
def cli(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """Lamina: a cloud for virtual appliances."""
    ctx.obj = Context(url, as_json)


def client_commands() -> click.Group:
    """The ``lamina`` group with every client command registered (safe to call twice)."""
    groups = (appliance, audit, channel, host, image, instance, job, reconcile, user)
    for module in (*groups, volume, snapshot, network):
        module.register(cli)
    return cli


def run(group: click.Group, argv: Sequence[str] | None = None) -> None:
    """Run ``group`` on the command line (``sys.argv`` by default)."""
    # `--json` is accepted anywhere on the line, not only right after `lamina`.
    args = list(sys.argv[1:] if argv is None else argv)
    if "--json" in args:
        args = ["--json"] + [a for a in args if a != "--json"]
    group(args=args)
