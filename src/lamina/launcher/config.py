"""``lamina config show``: the settings this machine's files give, beside the manager's own.

It reads the local settings file (``lamina.config``), which is no client's business, so it
lives with the launcher rather than in ``lamina.cli``."""

from __future__ import annotations

import click

from lamina.cli.context import Context
from lamina.cli.output import emit_json
from lamina.config import load_settings, public_view
from lamina.errors import LaminaError


@click.group("config")
def config() -> None:
    """Settings."""


@config.command("show")
@click.pass_obj
def config_show(obj: Context) -> None:
    """Print the effective client and server settings (never secrets)."""
    from lamina.config import config_path

    local = load_settings()
    path = config_path()
    data: dict[str, object] = {
        "client": {"manager_url": obj.client.url, "config_file": str(path) if path else None},
    }
    try:
        data["server"] = obj.client.server_config()
    except LaminaError as exc:
        data["server"] = {"error": exc.message, "local_view": public_view(local)}
    if obj.json:
        emit_json(data)
        return
    click.echo(f"manager url    {obj.client.url}")
    click.echo(f"config file    {path or '(none: built-in defaults)'}")
    server = data["server"]
    assert isinstance(server, dict)
    if "error" in server:
        click.echo(f"server         unreachable ({server['error']}); local settings:")
        server = server["local_view"]
    click.echo(f"data dir       {server['data_dir']}")
    click.echo(f"database       {server['database']['url']}")
    click.echo(
        f"agent          {server['agent']['host']}:{server['agent']['port']} "
        f"{server['agent']['libvirt_uri']}"
    )
