"""``lamina``: the command line. Each command group lives in its own module."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from lamina import __version__
from lamina.errors import LaminaError

if TYPE_CHECKING:
    from lamina.client import Client


class Context:
    """What every command gets: where the manager is, and how to print."""

    def __init__(self, url: str | None, as_json: bool) -> None:
        self.url = url
        self.json = as_json
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        from lamina.client import Client

        if self._client is None:
            self._client = Client(self.url)
        return self._client


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


def main() -> None:
    from lamina.cli import (
        appliance,
        audit,
        channel,
        host,
        image,
        instance,
        job,
        network,
        snapshot,
        system,
        user,
        volume,
    )

    groups = (appliance, audit, channel, host, image, instance, job, system, user)
    for module in (*groups, volume, snapshot, network):
        module.register(cli)
    # `--json` is accepted anywhere on the line, not only right after `lamina`.
    args = sys.argv[1:]
    if "--json" in args:
        args = ["--json"] + [a for a in args if a != "--json"]
    cli(args=args)
