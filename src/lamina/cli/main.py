"""``lamina``: the command line. Each command group lives in its own module.

Every command here is a client of the manager's REST API. The commands that run the manager
or the agent, or work on this machine's files (``serve``, ``agent``, ``config``, ``user
bootstrap``, ``channel keygen``/``build``) are added by ``lamina.launcher``, which builds the
``lamina`` console command from the group here.

A command's module is imported only when that command is invoked (or listed by ``--help``):
``lamina --version`` imports no command module, no HTTP client and no settings model, so it
starts in a fraction of the time (see ``benchmarks/cli.py``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from lamina import __version__
from lamina.cli.context import LEAF
from lamina.errors import LaminaError

#: Every client command of ``lamina``: its name -> the module that holds it. A module with a
#: ``register(group)`` registers its own commands; otherwise the module's attribute of that
#: name is the command. A unit test holds this table to what the modules register.
COMMANDS = {
    "appliance": "lamina.cli.appliance",
    "audit": "lamina.cli.audit",
    "channel": "lamina.cli.channel",
    "host": "lamina.cli.host",
    "image": "lamina.cli.image",
    "instance": "lamina.cli.instance",
    "job": "lamina.cli.job",
    "network": "lamina.cli.network",
    "dns": "lamina.cli.network",
    "profile": "lamina.cli.profile",
    "reconcile": "lamina.cli.reconcile",
    "snapshot": "lamina.cli.snapshot",
    "user": "lamina.cli.user",
    "volume": "lamina.cli.volume",
    "whoami": "lamina.cli.user",
}


class Group(click.Group):
    """The ``lamina`` group: loads each command's module on first use, and turns every error
    into one clear line on stderr (one JSON object under ``--json``): exit code 2 for a bad
    request (HTTP 400) or a usage error, 1 for any other error, 0 when the reader of stdout
    went away (``lamina job list | head -1``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = {}
        self.extensions: dict[str, list[Callable[[click.Command], None]]] = {}
        self._loaded: set[str] = set()

    def lazy_command(self, name: str, module: str) -> None:
        """``name`` is a command of ``module``, imported when ``name`` is first needed."""
        self.lazy[name] = module

    def extend(self, name: str, hook: Callable[[click.Command], None]) -> None:
        """Run ``hook`` on the command ``name`` once it is loaded (the launcher adds its
        local subcommands to client groups this way: ``user bootstrap``)."""
        self.extensions.setdefault(name, []).append(hook)
        if name in self.commands:
            hook(self.commands[name])

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self._load(self.lazy[cmd_name], cmd_name)
        return self.commands.get(cmd_name)

    def _load(self, module_name: str, name: str) -> None:
        if module_name not in self._loaded:
            self._loaded.add(module_name)
            module = importlib.import_module(module_name)
            register = getattr(module, "register", None)
            if register is not None:
                register(self)
            else:
                self.add_command(getattr(module, name))
        if name not in self.commands:  # a module whose register() forgot it
            self.add_command(getattr(importlib.import_module(module_name), name))

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(cmd, name)
        for hook in self.extensions.get(name or cmd.name or "", []):
            hook(cmd)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _reported(None, "--json" in args):
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _reported(ctx, bool(ctx.params.get("as_json"))):
            return super().invoke(ctx)


@contextmanager
def _reported(ctx: click.Context | None, as_json: bool) -> Iterator[None]:
    """Errors as the user sees them; each ends in ``click.exceptions.Exit`` with its code."""
    try:
        yield
    except BrokenPipeError:
        _quiet_stdout()
        raise click.exceptions.Exit(0) from None
    except click.exceptions.Exit:
        raise
    except click.ClickException as exc:
        if not as_json:
            raise
        details: dict[str, Any] = {}
        usage_ctx = getattr(exc, "ctx", None)
        if isinstance(usage_ctx, click.Context):
            details["usage"] = usage_ctx.get_usage()
        code = "usage_error" if isinstance(exc, click.UsageError) else "error"
        _report_json(code, exc.format_message(), details)
        raise click.exceptions.Exit(exc.exit_code) from None
    except LaminaError as exc:
        leaf = ctx.meta.get(LEAF) if ctx is not None else None
        message, details = in_flags(exc, leaf)
        obj = ctx.obj if ctx is not None else None
        # Refused (401, or 403 auth_missing) when we signed nothing: we had no keys.
        if exc.status in (401, 403) and getattr(obj, "signed", True) is False:
            from lamina.client.credentials import missing_message

            message = missing_message()
        if as_json:
            _report_json(exc.code, message, details)
        else:
            click.echo(f"error: {message}", err=True)
        raise click.exceptions.Exit(2 if exc.status == 400 else 1) from None


def _report_json(code: str, message: str, details: dict[str, Any]) -> None:
    error = {"code": code, "message": message, "details": details}
    click.echo(json.dumps({"error": error}, sort_keys=True, default=str), err=True)


def _quiet_stdout() -> None:
    """The reader of stdout is gone: whatever is still buffered goes nowhere, silently (the
    interpreter's last flush would otherwise fail again)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def in_flags(exc: LaminaError, command: click.Command | None) -> tuple[str, dict[str, Any]]:
    """``exc``'s message and details with the API's field names (``guest_port``) written as
    the flags ``command`` takes (``--port``): in ``details.fields`` and where a message part
    starts with ``field:``."""
    details = dict(exc.details)
    if command is None:
        return exc.message, details
    from lamina.cli.flags import flag_names

    names = flag_names(command)

    def flag(field: str) -> str:
        head = field.split(".", 1)[0]
        return names.get(field) or (names[head] + field[len(head) :] if head in names else field)

    fields = details.get("fields")
    if isinstance(fields, list):
        details["fields"] = [
            {**f, "field": flag(str(f["field"])), "api_field": f["field"]}
            if isinstance(f, dict) and "field" in f
            else f
            for f in fields
        ]
    message = re.sub(
        r"(^|; )([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_]+)*)(?=: )",
        lambda m: m.group(1) + flag(m.group(2)),
        exc.message,
    )
    return message, details


@click.group(cls=Group)
@click.option(
    "--url",
    envvar="LAMINA_URL",
    help="Manager URL with its scheme, e.g. http://127.0.0.1:8775 "
    "(default: $LAMINA_URL, the profile's url, the settings).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (errors too).")
@click.version_option(__version__, prog_name="lamina")
@click.pass_context
def cli(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """Lamina: a cloud for virtual appliances.

    \b
    Examples:
      lamina whoami
      lamina --json instance list
    """
    from lamina.cli.context import Context

    from_env = ctx.get_parameter_source("url") == click.core.ParameterSource.ENVIRONMENT
    ctx.obj = Context(url, as_json, url_from="LAMINA_URL" if from_env else "--url")


def client_commands() -> Group:
    """The ``lamina`` group with every client command registered, each loaded on first use
    (safe to call twice)."""
    assert isinstance(cli, Group)
    for name, module in COMMANDS.items():
        cli.lazy_command(name, module)
    return cli


def run(group: click.Group, argv: Sequence[str] | None = None) -> None:
    """Run ``group`` on the command line (``sys.argv`` by default)."""
    # `--json` is accepted anywhere on the line, not only right after `lamina`.
    args = list(sys.argv[1:] if argv is None else argv)
    if "--json" in args:
        args = ["--json"] + [a for a in args if a != "--json"]
    group(args=args, prog_name="lamina")
