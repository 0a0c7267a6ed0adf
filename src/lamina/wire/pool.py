"""The manager's connections to its agents, over mutual TLS with the manager's certificate."""

from __future__ import annotations

import ssl
import threading
from typing import Protocol

from lamina.errors import BackendUnavailable
from lamina.wire.client import AgentClient
from lamina.wire.tls import TLSFiles, client_context


class Host(Protocol):
    """What the pool needs of a host: its name, address and the fingerprint of its enrolled
    agent's certificate."""

    name: str
    address: str
    cert_fingerprint: str | None


class AgentPool:
    def __init__(self, tls: TLSFiles, timeout: float = 30.0, deployment: str | None = None) -> None:
        self._tls: ssl.SSLContext = client_context(tls)
        self._timeout = timeout
        #: The deployment id every call names (None: none, e.g. a test's own pool).
        self.deployment = deployment
        self._clients: dict[str, AgentClient] = {}
        self._lock = threading.Lock()

    def for_host(self, host: Host) -> AgentClient:
        if host.cert_fingerprint is None:
            raise BackendUnavailable(f"host {host.name!r} has not enrolled its agent yet")
        return self.for_address(host.address)

    def for_address(self, address: str) -> AgentClient:
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = AgentClient(
                    address, self._tls, self._timeout, self.deployment
                )
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
