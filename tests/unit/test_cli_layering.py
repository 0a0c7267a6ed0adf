"""The command line talks only to the client (import-linter's ``cli-client-only`` contract
checks the imports); whatever reaches further is added by ``lamina.launcher``, and the
``lamina`` command still offers it where it always was."""

from __future__ import annotations

import click

from lamina.client import QUOTAS
from lamina.identity.models import QUOTAS as USER_QUOTAS
from lamina.launcher import build_cli


def test_the_client_knows_the_quotas_the_manager_keeps() -> None:
    assert QUOTAS == USER_QUOTAS


def test_the_launcher_adds_its_commands_where_they_always_were() -> None:
    group = build_cli()

    def names(path: str) -> set[str]:
        command: click.Command | None = group
        for part in path.split():
            assert isinstance(command, click.Group)
            command = command.get_command(click.Context(command), part)
        assert isinstance(command, click.Group)
        return set(command.list_commands(click.Context(command)))

    assert {"serve", "agent", "config", "reconcile", "whoami"} <= names("")
    assert {"bootstrap", "add", "list", "key"} <= names("user")
    assert {"keygen", "build", "add", "list", "refresh", "remove"} <= names("channel")
    assert names("config") == {"show"}
    # Building twice (as the tests and the console command may) changes nothing.
    assert build_cli() is group and "bootstrap" in names("user")
