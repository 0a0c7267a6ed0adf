"""The verbs every resource group answers (``list`` and ``show``), and the older names some
groups keep beside them as aliases (VISOR's ``brief``/``detail``/``head``, VBS's
``describe``): one command under two names, the alias's help saying which it stands for."""

from __future__ import annotations

import copy
import inspect

import click


def alias(group: click.Group, name: str, of: str, why: str = "") -> click.Command:
    """Register ``name`` in ``group`` as another name of its command ``of``. Its help says
    so (``why`` tells where the older name comes from, e.g. "VISOR's name"), and it is
    listed under its own name in ``--help`` with that one line."""
    target = group.commands[of]
    twin = copy.copy(target)
    twin.name = name
    note = f"Alias of `lamina {group.name} {of}`" + (f" ({why})" if why else "") + "."
    twin.short_help = note
    # The command's help is its docstring as written: dedent it before putting a line above.
    twin.help = f"{note}\n\n{inspect.cleandoc(target.help or '')}".rstrip()
    group.add_command(twin, name)
    return twin
