"""The command line talks only to the client: ``lamina.cli`` imports ``lamina.client`` and
``lamina.errors``, nothing of the manager or the agent; whatever reaches further is added by
``lamina.launcher``, and the ``lamina`` command still offers it where it always was."""

from __future__ import annotations

import ast
from pathlib import Path

import click

import lamina.cli
from lamina.client import QUOTAS
from lamina.identity.models import QUOTAS as USER_QUOTAS
from lamina.launcher import build_cli

CLI = Path(lamina.cli.__file__).parent
#: What a module of lamina.cli may import from lamina (beside its own modules and the client's).
ALLOWED = {"lamina", "lamina.cli", "lamina.client", "lamina.errors"}


def _lamina_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "lamina" or name.startswith("lamina.")}


def test_the_cli_imports_only_the_client() -> None:
    wrong = {
        f"{path.name} imports {name}"
        for path in sorted(CLI.glob("*.py"))
        for name in _lamina_imports(path)
        # lamina.cli's own modules, and the client's (lamina.client.credentials)
        if name not in ALLOWED and not name.startswith(("lamina.cli.", "lamina.client."))
    }
    assert not wrong, "lamina.cli must talk to the manager only through lamina.client: " + (
        "; ".join(sorted(wrong))
    )


def test_no_command_module_imports_the_group() -> None:
    """``lamina.cli.main`` imports every command module; none imports it back."""
    back = [
        path.name
        for path in sorted(CLI.glob("*.py"))
        if path.name != "main.py" and "lamina.cli.main" in _lamina_imports(path)
    ]
    assert not back


def test_the_client_knows_the_quotas_the_manager_keeps() -> None:
    assert QUOTAS == USER_QUOTAS


def test_the_launcher_adds_its_commands_where_they_always_were() -> None:
    group = build_cli()

    def names(path: str) -> set[str]:
        command: click.Command = group
        for part in path.split():
            assert isinstance(command, click.Group)
            command = command.commands[part]
        assert isinstance(command, click.Group)
        return set(command.commands)

    assert {"serve", "agent", "config", "reconcile", "whoami"} <= names("")
    assert {"bootstrap", "add", "list", "key"} <= names("user")
    assert {"keygen", "build", "add", "list", "refresh", "remove"} <= names("channel")
    assert names("config") == {"show"}
    # Building twice (as the tests and the console command may) changes nothing.
    assert build_cli() is group and "bootstrap" in names("user")
