"""``lamina serve``, ``lamina agent``, ``lamina config show`` and ``lamina reconcile``."""

from __future__ import annotations

import click

from lamina.cli.main import Context
from lamina.cli.output import emit_json, table
from lamina.config import load_settings, public_view
from lamina.errors import LaminaError
from lamina.logs import setup_logging


@click.command("serve")
@click.option("--host", help="Listen address (default from the settings).")
@click.option("--port", type=int, help="Listen port (default from the settings).")
def serve(host: str | None, port: int | None) -> None:
    """Run the manager: REST API, job runner and host monitor."""
    import uvicorn

    from lamina.api.app import create_app
    from lamina.api.edge import BoundedHttpTools
    from lamina.api.zerocopy import ZeroCopy
    from lamina.identity.transport import manager_tls
    from lamina.manager import build_services

    settings = load_settings()
    setup_logging(settings.log_level)
    # Checked before anything starts: a bad certificate or key stops the manager here.
    tls = manager_tls(settings, host)
    # httptools keeps any amount of header: this protocol counts it as it arrives.
    BoundedHttpTools.limit = settings.manager.max_header_bytes
    processes = settings.manager.processes
    if processes > 1:
        # Each worker process builds its own services from the same settings; several
        # managers on one database are safe (job leases, row locks).
        build_services(settings).close()  # migrate once, before the workers race to
        target: object = "lamina.api.app:app_from_settings"
    else:
        target = ZeroCopy(create_app(build_services(settings)))
    uvicorn.run(
        target,  # type: ignore[arg-type]
        factory=processes > 1,
        workers=processes if processes > 1 else None,
        host=host or settings.manager.host,
        port=port or settings.manager.port,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",
        # The client address is the socket's: a forwarded-for header from a local process
        # must not choose what the audit trail and the login lock-out see.
        proxy_headers=False,
        http=BoundedHttpTools,
        h11_max_incomplete_event_size=settings.manager.max_header_bytes,
    )


@click.command("agent")
@click.option("--manager", "manager_url", help="Manager URL used to enrol.")
@click.option("--token", help="One-time enrolment token from `lamina host add`.")
def agent(manager_url: str | None, token: str | None) -> None:
    """Run the host agent (enrolling first if it has no certificate)."""
    from lamina.agent.main import run_agent

    settings = load_settings()
    setup_logging(settings.log_level)
    run_agent(settings, manager_url=manager_url, token=token)


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


@click.command("reconcile")
@click.option(
    "--fix",
    is_flag=True,
    help="Fix the differences named by ID (from a dry run), if still there unchanged.",
)
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.pass_obj
def reconcile(obj: Context, fix: bool, ids: tuple[str, ...]) -> None:
    """Compare the database with what the hosts really run.

    Without --fix, a dry run: each difference with its ID and the fix it would get. Review
    it, then `lamina reconcile --fix ID...` applies the fixes of those IDs only, and only
    if each difference is found again unchanged; anything else is left alone."""
    if ids and not fix:
        raise click.UsageError("IDs are for --fix: lamina reconcile --fix ID...")
    if fix and not ids:
        raise click.UsageError(
            "name the differences to fix: run `lamina reconcile`, review, then "
            "`lamina reconcile --fix ID...` with the IDs it showed"
        )
    diffs = obj.client.reconcile(fix=list(ids) if fix else None)
    if obj.json:
        emit_json(diffs)
        return
    if not diffs:
        click.echo("no differences: the database matches the hosts")
        return
    columns = ["id", "kind", "resource", "database", "backend", "fix"]
    table(diffs, columns + (["outcome"] if fix else []))


def register(cli: click.Group) -> None:
    for command in (serve, agent, config, reconcile):
        cli.add_command(command)
