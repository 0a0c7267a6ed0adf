"""A host joins as docs/hosts.md says one joins from another machine: its own settings file
(manager.public_url, agent.host), `lamina agent --enrol TOKEN` once over HTTPS, then plain
`lamina agent` on later starts. The "other machine" is a namespace host with its own
address and libvirtd; the manager is reached only through its public URL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Cloud, wait_until
from hosts import AGENT_PORT, HostProc, manager_env
from hosts import lab as lab  # noqa: F401 - the fixture

from lamina.launcher.nshosts import Lab, NamespaceHost

pytestmark = pytest.mark.integration


@pytest.fixture
def far(lab: Lab) -> Iterator[NamespaceHost]:  # noqa: F811
    host = lab.hosts["h3"]
    yield host
    host.reset()


def test_a_host_enrols_with_its_own_settings_and_the_enrol_flag(
    lab: Lab,  # noqa: F811
    far: NamespaceHost,
    make_cloud: Callable[..., Cloud],
    tmp_path: Path,
) -> None:
    cloud = make_cloud(LAMINA_MANAGER__TLS="ca")
    cloud.base_env.update(manager_env(lab, cloud))
    cloud.start_manager()
    public_url = cloud.base_env["LAMINA_MANAGER__PUBLIC_URL"]
    assert public_url.startswith("https://") and str(lab.gateway) in public_url

    added = cloud.cli("host", "add", "far", "--address", f"{far.address}:{AGENT_PORT}").stdout
    command = added.splitlines()[-1].split()
    assert command[:2] == ["lamina", "agent"] and "--enrol" in command, added
    token = command[command.index("--enrol") + 1]

    # The host's own settings file, as docs/hosts.md writes /etc/lamina/lamina.toml; none of
    # the manager's variables reach it.
    data = tmp_path / "far-data"
    config = tmp_path / "far.toml"
    config.write_text(
        f'data_dir = "{data}"\n'
        f'[manager]\npublic_url = "{public_url}"\n'
        f'[agent]\nhost = "{far.address}"\nport = {AGENT_PORT}\n'
        'libvirt_uri = "qemu:///system"\nvolumes = false\nnetwork_namespace = ""\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env["LAMINA_CONFIG"] = str(config)

    def agent(*args: str) -> HostProc:
        proc = HostProc(far, "agent-far", ["agent", *args], env, tmp_path / "agent-far.log")
        cloud.agents.append(proc.start())
        return proc

    client = cloud.client()
    first = agent("--enrol", token)  # no --manager: manager.public_url
    wait_until(lambda: client.host("far")["status"] == "up", 60, "far up")
    assert (data / "agent" / "tls" / "agent.pem").exists()
    shown = client.host("far")
    assert shown["enrolled"] and shown["address"] == f"{far.address}:{AGENT_PORT}"

    # Later starts need no token.
    first.kill()
    wait_until(lambda: client.host("far")["status"] == "down", 30, "far down")
    agent()
    wait_until(lambda: client.host("far")["status"] == "up", 60, "far up again")
    assert (tmp_path / "agent-far.log").read_text().count("enrolled as host far") == 1
