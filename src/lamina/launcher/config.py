"""``lamina config show``: the settings this machine's files give, beside the manager's own.

It reads the local settings file (``lamina.config``), which is no client's business, so it
lives with the launcher rather than in ``lamina.cli``."""

from __future__ import annotations

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json


@click.group("config")
def config() -> None:
    """Settings: this machine's and the manager's.

    \b
    Examples:
      lamina config show
    """


def _why(exc: Exception) -> tuple[str, str]:
    """How the manager's settings could not be read: ``refused``, ``unreachable`` or
    ``error``, and the message to print."""
    from lamina.errors import BackendUnavailable, Forbidden, Unauthorized

    if isinstance(exc, Forbidden):
        return "refused", "only administrators may read the server's settings"
    if isinstance(exc, Unauthorized):
        return "refused", getattr(exc, "message", str(exc))
    if isinstance(exc, BackendUnavailable):
        return "unreachable", getattr(exc, "message", str(exc))
    return "error", getattr(exc, "message", str(exc))


@config.command("show")
@click.pass_obj
def config_show(obj: Context) -> None:
    """Print the effective client and server settings (never secrets). The server's come
    from the manager (administrators only); when the manager refuses or cannot be reached,
    this machine's settings file is shown instead, and why. --json prints them for scripts.

    \b
    Examples:
      lamina config show
      lamina --json config show
    """
    from lamina.config import config_path, load_settings, public_view
    from lamina.errors import LaminaError

    local = load_settings()
    path = config_path()
    data: dict[str, object] = {
        "client": {"manager_url": obj.client.url, "config_file": str(path) if path else None},
    }
    try:
        data["server"] = obj.client.server_config()
    except LaminaError as exc:
        state, why = _why(exc)
        data["server"] = {"error": why, "state": state, "local_view": public_view(local)}
    if obj.json:
        emit_json(data)
        return
    click.echo(f"manager url    {obj.client.url}")
    click.echo(f"config file    {path or '(none: built-in defaults)'}")
    server = data["server"]
    assert isinstance(server, dict)
    if "error" in server:
        click.echo(f"server         {server['state']} ({server['error']}); local settings:")
        server = server["local_view"]
    click.echo(f"data dir       {server['data_dir']}")
    click.echo(f"database       {server['database']['url']}")
    click.echo(
        f"agent          {server['agent']['host']}:{server['agent']['port']} "
        f"{server['agent']['libvirt_uri']}"
    )
