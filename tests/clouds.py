"""Clouds for integration and end-to-end tests: real manager and agent processes (libvirt
test driver unless a test asks for QEMU), each in its own temporary directory."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Cloud, free_port, wait_until
from namespaces import Namespaces

from lamina.agent.tgt import parse_targets
from lamina.client import Client
from lamina.identity.ca import CertificateAuthority
from lamina.wire.client import AgentClient
from lamina.wire.pool import AgentPool


def add_host(cloud: Cloud, name: str, uri: str = "test:///default", **env: str) -> int:
    """Register a host, start its agent with the token, wait until it is up; return its port."""
    port = free_port()
    out = cloud.cli("--json", "host", "add", name, "--address", f"127.0.0.1:{port}")
    cloud.start_agent(name, json.loads(out.stdout)["token"], port, uri=uri, **env)
    client = cloud.client()
    wait_until(lambda: client.host(name)["status"] == "up", 30, f"host {name} up")
    return port


@pytest.fixture
def make_cloud(tmp_path: Path) -> Iterator[Callable[..., Cloud]]:
    clouds: list[Cloud] = []

    def make(database_url: str | None = None, **env: str) -> Cloud:
        cloud = Cloud(tmp_path / f"cloud{len(clouds)}", database_url, **env)
        clouds.append(cloud)
        return cloud

    yield make
    for cloud in clouds:
        cloud.stop()
    remove_targets_under(tmp_path)


def remove_targets_under(root: Path) -> list[int]:
    """Withdraw every tgt target whose LUN is a file under ``root``: tgtd outlives the
    agents of a test, and a volume a test left attached would stay exported."""
    try:
        shown = subprocess.run(
            ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []  # no tgt here: nothing can have been exported
    removed = []
    for target in parse_targets(shown.stdout):
        if any(Path(path).is_relative_to(root) for path in target.luns.values()):
            subprocess.run(
                ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force",
                 "--tid", str(target.tid)],
                capture_output=True, timeout=30,
            )  # fmt: skip
            removed.append(target.tid)
    return removed


@pytest.fixture
def kernel(tmp_path: Path) -> str:
    """A file to give as a kernel: the libvirt test driver boots nothing, only checks the
    path exists (tests with real guests bring their own)."""
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"k" * 4096)
    return str(path)


@pytest.fixture
def cloud(make_cloud: Callable[..., Cloud]) -> Cloud:
    """A manager on SQLite with one host (test driver) named h1."""
    c = make_cloud()
    c.start_manager()
    add_host(c, "h1")
    return c


@pytest.fixture
def client(cloud: Cloud) -> Iterator[Client]:
    with cloud.client() as c:
        yield c


@pytest.fixture
def netns(namespaces: Namespaces) -> str:
    """The agent's network namespace, made by the test (its processes killed and it removed
    at the end, with every other namespace of the test)."""
    return namespaces.make("agent")


@pytest.fixture
def h1_agent(cloud: Cloud) -> Iterator[AgentClient]:
    """h1's agent, as the manager reaches it; every target it exports is withdrawn at the
    end whatever happens."""
    pool = AgentPool(CertificateAuthority(cloud.root / "manager" / "ca").client_files())
    agent = pool.for_address(cloud.client().host("h1")["address"])
    try:
        yield agent
    finally:
        try:
            for exported in agent.export_list():
                agent.volume_unexport(exported.volume)
        finally:
            pool.close()
