"""``lamina serve`` and ``lamina agent``: the two daemons, each with its settings and logging."""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--host", help="Listen address (default from the settings).")
@click.option(
    "--port", type=click.IntRange(1, 65535), help="Listen port (default from the settings)."
)
def serve(host: str | None, port: int | None) -> None:
    """Run the manager: REST API, job runner and host monitor.

    It runs in the foreground, logs on stderr; `make up` runs it for you.

    \b
    Examples:
      lamina serve
      LAMINA_DATABASE__URL=postgresql+psycopg://lamina@db/lamina lamina serve --host 0.0.0.0
    """
    import uvicorn

    from lamina.api.app import create_app
    from lamina.api.edge import BoundedHttpTools
    from lamina.api.zerocopy import ZeroCopy
    from lamina.config import load_settings
    from lamina.identity.transport import manager_tls
    from lamina.logs import setup_logging
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
@click.option(
    "--manager",
    "manager_url",
    metavar="URL",
    help="The manager's URL, as this host reaches it (default: manager.public_url, else "
    "manager.host and port).",
)
@click.option(
    "--enrol",
    "--token",
    "token",
    metavar="TOKEN",
    help="One-time enrolment token from `lamina host add` (`--token` is the same).",
)
def agent(manager_url: str | None, token: str | None) -> None:
    """Run the host agent (enrolling first if it has no certificate).

    It runs in the foreground, logs on stderr. On another machine: register the host on
    the manager (`lamina host add NAME --address ADDRESS:8776`), then start the agent there
    once with the token it printed; later starts need no token (see docs/hosts.md).

    \b
    Examples:
      lamina agent --manager https://192.0.2.10:8775 --enrol TOKEN
      lamina agent
    """
    from lamina.agent.main import run_agent
    from lamina.config import load_settings
    from lamina.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level)
    run_agent(settings, manager_url=manager_url, token=token)
