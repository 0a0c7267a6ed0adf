"""What every command of ``lamina.cli`` is handed: its own module, so that the command modules
and ``lamina.cli.main`` (which imports them all) do not import each other."""

from __future__ import annotations

from lamina.client import Client


class Context:
    """What every command gets: where the manager is, and how to print."""

    def __init__(self, url: str | None, as_json: bool) -> None:
        self.url = url
        self.json = as_json
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url)
        return self._client
