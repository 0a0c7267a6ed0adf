"""The ``lamina`` console command: the client's commands (``lamina.cli``) plus those that run
on this machine without a manager to ask.

``lamina.cli`` talks only to the manager, through ``lamina.client``. What reaches further sits
here, above every other package: ``serve`` (the API, the database, the job runner), ``agent``
(the host side), ``user bootstrap`` (the database directly), ``config show`` (the local settings
file) and the channel publisher's ``channel keygen`` and ``channel build``. Users see one
command; which package a subcommand lives in is no business of theirs.

Like the client's commands, each is imported only when it is used (``lamina.cli.main.Group``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click

from lamina.cli.main import Group, client_commands, run

#: The local commands: name -> module (the module's attribute of that name is the command).
LOCAL = {
    "serve": "lamina.launcher.daemons",
    "agent": "lamina.launcher.daemons",
    "config": "lamina.launcher.config",
}
#: Local subcommands of client groups: group -> (module, attribute) of each.
SUBCOMMANDS = {
    "user": [("lamina.launcher.bootstrap", "bootstrap")],
    "channel": [("lamina.launcher.channel", "keygen"), ("lamina.launcher.channel", "build")],
}


def build_cli() -> Group:
    """The whole ``lamina`` group: every client command, and the local ones added to the
    groups they belong in (safe to call twice)."""
    group = client_commands()
    for name, module in LOCAL.items():
        group.lazy_command(name, module)
    for name, commands in SUBCOMMANDS.items():
        if name not in group.extensions:
            group.extend(name, _adder(commands))
    return group


def _adder(commands: list[tuple[str, str]]) -> Callable[[click.Command], None]:
    def add(sub: click.Command) -> None:
        assert isinstance(sub, click.Group), f"lamina {sub.name} is no command group"
        for module, attr in commands:
            sub.add_command(getattr(importlib.import_module(module), attr))

    return add


def main() -> None:
    run(build_cli())
