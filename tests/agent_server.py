"""An agent served in the test's own process, over mutual TLS as ``run_agent`` serves it:
for tests that call its procedures directly and look at its state."""

from __future__ import annotations

import contextlib
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from harness import free_port, wait_until

from lamina.agent.cache import FetchConfig
from lamina.agent.drivers import load_hypervisor
from lamina.agent.networks import NetworkConfig
from lamina.agent.server import Agent, create_agent_app
from lamina.agent.volumes import VolumeConfig
from lamina.identity.ca import CertificateAuthority
from lamina.wire.tls import TLSFiles, key_pem, make_csr, new_key, write_private


@dataclass
class InProcessAgent:
    agent: Agent
    #: host:port it listens on.
    address: str
    #: The manager's CA, which signed the agent's certificate and signs its clients'.
    ca: CertificateAuthority


@contextlib.contextmanager
def serve_agent(
    root: Path,
    uri: str = "test:///default",
    volumes: VolumeConfig | None = None,
    network: NetworkConfig | None = None,
    fetch: FetchConfig | None = None,
) -> Iterator[InProcessAgent]:
    """An agent on a free port of 127.0.0.1 with its data under ``root/agent``, its
    certificate (for 127.0.0.1) from a CA under ``root/manager/ca``. It starts as
    ``run_agent`` starts one (``restore()``) and stops its listeners at the end (its
    dnsmasq processes stay, as a real agent's do: remove its networks to stop them).
    ``fetch``: what its cache may fetch; by default files under the temporary folder (where
    tests make them) and URLs on loopback."""
    ca = CertificateAuthority(root / "manager" / "ca")
    key = new_key()
    tls = TLSFiles(
        root / "agent" / "tls" / "agent.pem", root / "agent" / "tls" / "agent.key", ca.cert_path
    )
    write_private(tls.key, key_pem(key))
    write_private(
        tls.cert, ca.sign(make_csr(key, "h1"), common_name="h1", sans=["127.0.0.1"], server=True)
    )
    hypervisor = load_hypervisor("libvirt", uri=uri, domain_type=None)
    if fetch is None:
        fetch = FetchConfig(roots=(Path(tempfile.gettempdir()),), allow_private=True)
    agent = Agent(root / "agent", hypervisor, volumes, network, fetch)
    agent.restore()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_agent_app(agent),
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(tls.cert),
            ssl_keyfile=str(tls.key),
            ssl_ca_certs=str(tls.ca),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, name="agent", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "the agent to listen")
        yield InProcessAgent(agent, f"127.0.0.1:{port}", ca)
    finally:
        server.should_exit = True
        thread.join(10)
        agent.close()
        hypervisor.close()
