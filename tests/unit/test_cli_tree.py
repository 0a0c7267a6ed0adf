"""The whole ``lamina`` command tree, as ``lamina.launcher.build_cli`` builds it, held to the
conventions every group follows: a help that ends with examples, help on every option,
``list`` and ``show`` in every group that holds resources. And the lazy loading that keeps
start-up short changes nothing a user sees."""

from __future__ import annotations

import importlib
import inspect
import re

import click
import pytest

from lamina.cli.main import COMMANDS
from lamina.launcher import LOCAL, build_cli

#: Groups that hold no resources of their own (`dns` holds the group `record`): no
#: `list`/`show` to ask of them.
NO_RESOURCES = {"config", "dns"}


def _walk(command: click.Command, path: str = "lamina") -> list[tuple[str, click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{path} {name} is listed but cannot be loaded"
            found += _walk(sub, f"{path} {name}")
    return found


TREE = _walk(build_cli())


def test_the_tree_is_walked() -> None:
    paths = {p for p, _ in TREE}
    assert {"lamina", "lamina whoami", "lamina profile add", "lamina user key list"} <= paths
    assert {"lamina serve", "lamina config show", "lamina user bootstrap"} <= paths


@pytest.mark.parametrize(("path", "command"), TREE, ids=[p for p, _ in TREE])
def test_every_help_ends_with_examples(path: str, command: click.Command) -> None:
    text = inspect.cleandoc(command.help or "")
    assert "\b\nExamples:\n" in text, f"{path}: no \\b Examples: block"
    block = text.rsplit("\b\nExamples:\n", 1)[1].splitlines()
    assert 1 <= len(block) <= 3, f"{path}: one or two examples"
    for line in block:
        assert line.startswith("  ") and re.search(r"\blamina\b", line), (path, line)


@pytest.mark.parametrize(("path", "command"), TREE, ids=[p for p, _ in TREE])
def test_every_option_has_help(path: str, command: click.Command) -> None:
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"{path} {max(param.opts, key=len)} has no help"


@pytest.mark.parametrize(("path", "command"), TREE, ids=[p for p, _ in TREE])
def test_every_resource_group_lists_and_shows(path: str, command: click.Command) -> None:
    if not isinstance(command, click.Group) or path == "lamina":
        return
    if path.split()[-1] in NO_RESOURCES:
        return
    assert {"list", "show"} <= set(command.list_commands(click.Context(command))), path


def test_the_lazy_table_is_what_the_modules_register() -> None:
    """Every command module registers exactly the commands ``COMMANDS`` names for it."""
    scratch = click.Group("scratch")
    for module in sorted(set(COMMANDS.values())):
        importlib.import_module(module).register(scratch)
    assert set(scratch.commands) == set(COMMANDS)
    lamina = build_cli()
    ctx = click.Context(lamina)
    for name, command in scratch.commands.items():
        assert lamina.get_command(ctx, name) is command
    for name in LOCAL:
        assert lamina.get_command(ctx, name) is not None


def test_help_lists_every_command_with_its_one_line_help() -> None:
    from click.testing import CliRunner

    out = CliRunner().invoke(build_cli(), ["--help"]).output
    listed = dict(
        re.findall(r"^  (\S+)\s+(.*)$", out.split("Commands:\n", 1)[1], flags=re.MULTILINE)
    )
    assert set(listed) == set(COMMANDS) | set(LOCAL)
    assert listed["whoami"].startswith("Who the manager thinks you are")
