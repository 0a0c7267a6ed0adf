"""Naming the user's flag, not the API's field, in an error.

The manager names the body or query field it refused (``memory_mib``, ``guest_port``); a
person typed ``--memory`` or ``--port``. A command's options map their own parameter names
to their flags already; ``api_fields`` adds the fields whose API name differs from the
parameter's (``--memory`` is sent as ``memory_mib``). ``lamina.cli.main`` rewrites an
error's field names with both before printing it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

ATTRIBUTE = "lamina_api_fields"


def api_fields(**flags: str) -> Callable[[F], F]:
    """``@api_fields(memory_mib="--memory")``: the API's field ``memory_mib`` is this
    command's ``--memory``. Put it below ``@click.command`` (it marks the function, which
    ``flag_names`` finds through the command's callback)."""

    def mark(fn: F) -> F:
        setattr(fn, ATTRIBUTE, {**getattr(fn, ATTRIBUTE, {}), **flags})
        return fn

    return mark


def flag_names(command: click.Command) -> dict[str, str]:
    """API field name -> the flag (or argument) a person typed, for one command."""
    names: dict[str, str] = {}
    for param in command.params:
        if param.name is None:
            continue
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            names[param.name] = longest
        else:
            names[param.name] = param.human_readable_name
    callback = command.callback
    names.update(getattr(callback, ATTRIBUTE, {}) if callback else {})
    return names
