"""Agents for unit tests: the real agent (``lamina.agent.server``) over the fakes, reached by
the real ``AgentClient`` in-process (Starlette's TestClient: no socket, no TLS, no thread).

What a manager-side unit test sees is then what a real agent answers, routes, wire models
and error envelopes included; only the hypervisor and the volume backend underneath are
fakes, and those pass the contract suites in ``tests/contract``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from starlette.testclient import TestClient

from lamina.agent.drivers.fake import FakeHypervisor
from lamina.agent.fake_volumes import FakeVolumeBackend
from lamina.agent.server import Agent, create_agent_app
from lamina.wire.client import AgentClient
from lamina.wire.protocol import DEPLOYMENT_HEADER


class Host(Protocol):
    name: str
    address: str


class _AppClient(TestClient):
    """TestClient refuses per-request timeouts (the client passes some): no network, nothing
    to time out, so they are dropped."""

    def request(self, method: str, url: Any, **kwargs: Any) -> httpx.Response:
        kwargs.pop("timeout", None)
        response: httpx.Response = super().request(method, url, **kwargs)
        return response


class InProcessClient(AgentClient):
    """An ``AgentClient`` whose requests go straight into an agent app in this process."""

    def __init__(self, agent: Agent, address: str, deployment: str | None = None) -> None:
        super().__init__(address, ssl.create_default_context(), deployment=deployment)
        self._http.close()
        headers = {DEPLOYMENT_HEADER: deployment} if deployment else {}
        self._http = _AppClient(
            create_agent_app(agent), base_url=f"https://{address}", headers=headers
        )


@dataclass
class FakeHost:
    """One host: a real ``Agent`` over a ``FakeHypervisor`` and a ``FakeVolumeBackend``."""

    agent: Agent
    hypervisor: FakeHypervisor
    volumes: FakeVolumeBackend
    client: InProcessClient


@dataclass
class InProcessAgents:
    """An ``AgentPool`` of in-process agents, one per host name, made on first use with
    their data under ``root/<host name>``."""

    root: Path
    deployment: str | None = None
    hosts: dict[str, FakeHost] = field(default_factory=dict)

    def host(self, name: str, address: str = "127.0.0.1:7000") -> FakeHost:
        """The host ``name`` (made now if new)."""
        found = self.hosts.get(name)
        if found is None:
            hypervisor = FakeHypervisor(hostname=name)
            agent = Agent(self.root / name, hypervisor)
            volumes = FakeVolumeBackend(deployment=lambda: agent.identity.id)
            agent.volumes = volumes  # before the app is built: its routes hold it
            client = InProcessClient(agent, address, self.deployment)
            found = self.hosts[name] = FakeHost(agent, hypervisor, volumes, client)
        return found

    def for_host(self, host: Host) -> AgentClient:
        return self.host(host.name, host.address).client

    def close(self) -> None:
        for host in self.hosts.values():
            host.client.close()
            host.agent.close()
