"""``lamina agent``: enrol if needed, then serve the manager over mutual TLS."""

from __future__ import annotations

import logging
import socket
import ssl

import uvicorn

from lamina.agent.cache import FetchConfig
from lamina.agent.drivers import load_hypervisor
from lamina.agent.enrol import enrol, remember_manager
from lamina.agent.migration_tls import has_pki, pki_dir
from lamina.agent.networks import NetworkConfig
from lamina.agent.server import Agent, create_agent_app
from lamina.agent.volumes import VolumeConfig
from lamina.config import Settings
from lamina.errors import ConfigError
from lamina.wire.tls import TLSFiles

log = logging.getLogger(__name__)


def agent_tls(settings: Settings) -> TLSFiles:
    tls = settings.agent_dir / "tls"
    return TLSFiles(tls / "agent.pem", tls / "agent.key", tls / "ca.pem")


def run_agent(settings: Settings, *, manager_url: str | None, token: str | None) -> None:
    files = agent_tls(settings)
    manager = remember_manager(settings.agent_dir, manager_url, settings.manager.url)
    if not files.exist():
        if not token:
            raise ConfigError(
                "this agent is not enrolled: start it once with --enrol TOKEN, the token "
                "that `lamina host add NAME --address HOST:PORT` printed"
            )
        enrol(manager, token, socket.gethostname(), files, pki_dir(settings.agent_dir))
    elif token:
        log.info("already enrolled; ignoring --token")
    if not has_pki(pki_dir(settings.agent_dir)):
        log.warning(
            "no migration certificate in %s: guests cannot migrate to or from this host "
            "(enrolled before Lamina issued them: enrol again to get one)",
            pki_dir(settings.agent_dir),
        )
    domain_type = None if settings.agent.domain_type == "auto" else settings.agent.domain_type
    hypervisor = load_hypervisor(
        settings.agent.hypervisor, uri=settings.agent.libvirt_uri, domain_type=domain_type
    )
    log.info(
        "agent on %s:%d, hypervisor %s (%s)",
        settings.agent.host,
        settings.agent.port,
        settings.agent.libvirt_uri,
        hypervisor.capabilities.domain_type,
    )
    volumes = VolumeConfig(
        enabled=settings.agent.volumes,
        backend=settings.agent.volume_backend,
        root=settings.volume_root,
        portal=settings.agent.iscsi_portal,
        vg=settings.agent.volume_vg,
        pool=settings.agent.volume_pool,
    )
    network = NetworkConfig(
        namespace=settings.agent.network_namespace,
        uplink=settings.agent.network_uplink,
        tunnel_address=settings.agent.tunnel_address,
    )
    fetch = FetchConfig(
        roots=settings.fetch_roots,
        allow_private=settings.images.http_allow_private,
        max_redirects=settings.images.http_max_redirects,
        manager_url=manager,
        ca_file=files.ca,
    )
    log.info(
        "the image cache fetches the repository's files from %s, and reads host files only "
        "under %s",
        manager,
        ", ".join(map(str, fetch.roots)) or "(none)",
    )
    agent = Agent(settings.agent_dir, hypervisor, volumes, network, fetch)
    agent.restore()
    app = create_agent_app(agent)
    try:
        uvicorn.run(
            app,
            host=settings.agent.host,
            port=settings.agent.port,
            ssl_certfile=str(files.cert),
            ssl_keyfile=str(files.key),
            ssl_ca_certs=str(files.ca),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    finally:
        agent.close()
