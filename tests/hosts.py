"""Several real hosts for integration tests: namespace hosts (``lamina.launcher.nshosts``),
each with its own libvirtd, and a cloud whose agents run inside them.

``lab`` is module-scoped (three hosts start in ~10-25 s): the tests of one module share it,
and each host is reset (guests destroyed, agents and dnsmasq stopped, interfaces removed)
when a cloud built on it is torn down. Its subnet is a random ``10.96.X.0/24`` not used on
this machine, its names ``lt<hex>-h1`` ... and ``lt<hex>-dc`` for the bridge.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from harness import Cloud, Proc, wait_until
from namespaces import sh

from lamina.identity.ca import CertificateAuthority
from lamina.launcher.nshosts import Lab, NamespaceHost
from lamina.wire.pool import AgentPool

AGENT_PORT = 8776


def _free_subnet() -> str:
    used = sh("ip", "-br", "addr").stdout
    for _ in range(100):
        subnet = f"10.96.{random.randrange(256)}."
        if subnet not in used:
            return subnet + "0/24"
    raise AssertionError("no free 10.96.X.0/24 subnet for a lab")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three namespace hosts h1, h2, h3 on one bridge, for the tests of one module."""
    made = Lab(f"lt{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("lab"), _free_subnet())
    try:
        made.add_hosts(["h1", "h2", "h3"])
        yield made
    finally:
        made.remove()


def manager_env(lab: Lab, cloud: Cloud) -> dict[str, str]:
    """What the manager of ``cloud`` needs so the lab's hosts reach it: listening on every
    address of the root namespace (the lab's gateway among them), known to them by the
    gateway's address."""
    return {
        "LAMINA_MANAGER__HOST": "0.0.0.0",
        "LAMINA_MANAGER__PUBLIC_URL": f"{cloud.scheme}://{lab.gateway}:{cloud.port}",
    }


def agent_env(cloud: Cloud, host: NamespaceHost, **env: str) -> dict[str, str]:
    return {
        **cloud.base_env,
        "LAMINA_AGENT__DATA_DIR": str(cloud.root / f"agent-{host.name}"),
        "LAMINA_AGENT__HOST": host.address,
        "LAMINA_AGENT__PORT": str(AGENT_PORT),
        "LAMINA_AGENT__LIBVIRT_URI": "qemu:///system",
        # The namespace host is the guests' network: their bridges, dnsmasq and taps live
        # in it, as on a real server.
        "LAMINA_AGENT__NETWORK_NAMESPACE": "",
        "LAMINA_AGENT__VOLUMES": "false",
        **env,
    }


class HostProc(Proc):
    """A Lamina process inside a namespace host (``nsenter`` execs it: same pid)."""

    def __init__(self, host: NamespaceHost, name: str, args: list[str], env: dict[str, str],
                 log: Path) -> None:  # fmt: skip
        super().__init__(name, args, env, log)
        self.host = host

    def argv(self) -> list[str]:
        return self.host.enter(super().argv())


def start_agent_on(cloud: Cloud, host: NamespaceHost, token: str | None, **env: str) -> Proc:
    """Start ``host``'s agent inside it (enrolling with ``token`` if given)."""
    args = ["agent", "--manager", cloud.base_env["LAMINA_MANAGER__PUBLIC_URL"]] + (
        ["--token", token] if token else []
    )
    log = cloud.root / f"agent-{host.name}.log"
    proc = HostProc(host, f"agent-{host.name}", args, agent_env(cloud, host, **env), log)
    cloud.agents.append(proc.start())
    return proc


def add_lab_host(cloud: Cloud, host: NamespaceHost, **env: str) -> None:
    """Register ``host`` with the cloud, start its agent inside it and wait until it is up."""
    out = cloud.cli("--json", "host", "add", host.name, "--address", f"{host.address}:{AGENT_PORT}")
    start_agent_on(cloud, host, json.loads(out.stdout)["token"], **env)
    client = cloud.client()
    wait_until(lambda: client.host(host.name)["status"] == "up", 60, f"host {host.name} up")


def volume_server_env(host: NamespaceHost) -> dict[str, str]:
    """The agent settings of a volume server on ``host`` (its own tgtd: ``Lab.start_tgtd``):
    volumes under its agent's folder, exported at its address, where the other hosts'
    QEMU (their iSCSI initiator) reach them over the bridge."""
    return {"LAMINA_AGENT__VOLUMES": "true", "LAMINA_AGENT__ISCSI_PORTAL": f"{host.address}:3260"}


def agent_pki(cloud: Cloud, host: NamespaceHost) -> Path:
    """Where ``host``'s agent wrote its migration certificate at enrolment."""
    return cloud.root / f"agent-{host.name}" / "pki"


def wait_agents_reconnected(cloud: Cloud, hosts: Sequence[NamespaceHost]) -> None:
    """Until each host's agent answers from its libvirtd again: the first call after a
    libvirtd restart fails on the old connection (the driver then opens another)."""
    pool = AgentPool(CertificateAuthority(cloud.root / "manager" / "ca").client_files())
    try:
        for host in hosts:
            agent = pool.for_address(f"{host.address}:{AGENT_PORT}")
            wait_until(agent.info, 30, f"{host.name}'s agent reaching its libvirtd again")
    finally:
        pool.close()


@pytest.fixture
def lab_cloud(lab: Lab, make_cloud: Callable[..., Cloud]) -> Iterator[Callable[..., Cloud]]:
    """``lab_cloud(hosts=("h1", "h2"), agent_env=None, tls=False, volume_server=None,
    **env)``: a manager on SQLite (``env`` for its settings) with agents on those lab hosts,
    each up. The hosts are reset afterwards.

    ``tls``: once enrolled, each host's libvirtd (and QEMU's migrations) use the migration
    certificate its agent got (``Lab.use_tls``): TLS only, ``host.peer_uri(dest)`` is how a
    source reaches a destination. ``volume_server``: that host (registered first, so the
    manager keeps new volumes there) runs its own tgtd and is the volume server; the other
    agents have no volumes."""
    used: list[NamespaceHost] = []

    def make(hosts: Sequence[str] = ("h1", "h2"), agent_env: dict[str, str] | None = None,
             tls: bool = False, volume_server: str | None = None, **env: str) -> Cloud:  # fmt: skip
        cloud = make_cloud(**env)
        cloud.base_env.update(manager_env(lab, cloud))
        cloud.start_manager()
        order = list(hosts)
        if volume_server is not None:
            order.remove(volume_server)
            order.insert(0, volume_server)
            lab.start_tgtd(volume_server)
        for name in order:
            host = lab.hosts[name]
            used.append(host)
            extra = volume_server_env(host) if name == volume_server else {}
            add_lab_host(cloud, host, **{**extra, **(agent_env or {})})
        if tls:
            for name in order:
                lab.use_tls(name, agent_pki(cloud, lab.hosts[name]))
            wait_agents_reconnected(cloud, [lab.hosts[name] for name in order])
        return cloud

    yield make
    for host in used:
        host.reset()
        if host.pki:  # back to plain TCP: the next cloud's certificates are another CA's
            lab.use_tls(host.name, None)
