"""The ``lamina`` console command: the client's commands (``lamina.cli``) plus those that run
on this machine without a manager to ask.

``lamina.cli`` talks only to the manager, through ``lamina.client``. What reaches further sits
here, above every other package: ``serve`` (the API, the database, the job runner), ``agent``
(the host side), ``user bootstrap`` (the database directly), ``config show`` (the local settings
file) and the channel publisher's ``channel keygen`` and ``channel build``. Users see one
command; which package a subcommand lives in is no business of theirs.
"""

from __future__ import annotations

import click

from lamina.cli.main import client_commands, run
from lamina.launcher import bootstrap, channel, config, daemons


def build_cli() -> click.Group:
    """The whole ``lamina`` group: every client command, and the local ones added to the
    groups they belong in (safe to call twice)."""
    group = client_commands()
    for command in (daemons.serve, daemons.agent, config.config):
        group.add_command(command)
    _subgroup(group, "user").add_command(bootstrap.bootstrap)
    for command in (channel.keygen, channel.build):
        _subgroup(group, "channel").add_command(command)
    return group


def _subgroup(group: click.Group, name: str) -> click.Group:
    sub = group.commands[name]
    assert isinstance(sub, click.Group), f"lamina {name} is no command group"
    return sub


def main() -> None:
    run(build_cli())
