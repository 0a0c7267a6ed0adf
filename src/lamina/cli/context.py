"""What every command of ``lamina.cli`` is handed: its own module, so that the command modules
and ``lamina.cli.main`` (which loads them all) do not import each other."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from lamina.client import Client

#: ``ctx.meta`` key under which the command that uses the client records itself (the same
#: as ``lamina.cli.main.LEAF``): the error handler names that command's flags.
LEAF = "lamina.command"


class Context:
    """What every command gets: where the manager is, and how to print."""

    def __init__(self, url: str | None, as_json: bool, url_from: str = "--url") -> None:
        self.url = url
        self.url_from = url_from
        self.json = as_json
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """The client of the manager (made on first use). The command that asks for it is
        recorded as the one whose flags an error from the manager is written in."""
        current = click.get_current_context(silent=True)
        if current is not None:
            current.meta[LEAF] = current.command
        if self._client is None:
            from lamina.client import Client
            from lamina.client.credentials import check_url

            if self.url is not None:
                check_url(self.url, self.url_from)  # named as the user gave it
            self._client = Client(self.url)
        return self._client

    @property
    def signed(self) -> bool | None:
        """Whether the client signs its requests (None: no client made yet)."""
        return None if self._client is None else self._client.access_key is not None
