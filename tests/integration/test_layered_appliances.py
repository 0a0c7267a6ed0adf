"""Layered appliances booted for real, through the CLI, manager, agent and libvirt/QEMU: the
bundled sample channel (``scripts/build-sample-channel.sh``) served on loopback, its two
applications deployed on one substrate, checked from inside the guests by what they print on
their consoles: a file from each layer, a rendered instance variable, the instance layer
surviving a stop and start, capture then redeploy, and a substrate upgrade reaching both
applications at their next boot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clouds import add_host
from harness import ROOT, Cloud, wait_until
from test_channels_manager import Server

from lamina.channels.build import build_channel
from lamina.channels.signing import generate_key, load_private_key, public_key_text

pytestmark = pytest.mark.integration
BOOT = 120  # seconds for a layered guest to print its ready line under TCG


class Channel:
    """The sample channel's sources, built and served."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources = root / "sources"
        self.public = root / "public"
        self.key = generate_key(root / "channel.key")
        self.publish()
        self.server = Server(self.public, root / "http.log")
        self.url = self.server.url + "channel.rss"
        self.token = public_key_text(self.key)

    def publish(self) -> None:
        build_channel(self.sources, self.public, load_private_key(self.root / "channel.key"))

    def add_substrate(self, version: str) -> None:
        """Publish another version of the substrate beside the first."""
        other = self.root / f"base-{version}"
        script = ROOT / "scripts/build-sample-channel.sh"
        subprocess.run(
            ["bash", str(script), str(other), "--substrate-version", version], check=True
        )
        # A root filesystem's links stay links (/etc/resolv.conf's target exists only in the
        # guest); following them would copy the host's files into the substrate.
        shutil.copytree(
            other / "sources" / "lamina-base",
            self.sources / f"lamina-base-{version}",
            symlinks=True,
        )
        self.publish()


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channel]:
    root = tmp_path_factory.mktemp("sample-channel")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-channel.sh"), str(root)], check=True)
    served = Channel(root)
    yield served
    served.server.stop()


def _console(cloud: Cloud, name: str) -> str:
    with cloud.client() as client:
        return str(client.console(name)["data"])


def _wait_ready(cloud: Cloud, name: str) -> str:
    wait_until(lambda: "lamina-base: ready" in _console(cloud, name), BOOT, f"{name} ready")
    return _console(cloud, name)


def _act(cloud: Cloud, name: str, action: str, **options: Any) -> None:
    with cloud.client() as client:
        job = client.wait_job(client.instance_action(name, action, **options)["id"], timeout=300)
    assert job["status"] == "succeeded", job


def _site_id(console: str) -> str:
    match = re.search(r"webserv: site-id (\S+)", console)
    assert match, console
    return match[1]


def test_layered_appliances_boot_persist_capture_and_upgrade(
    make_cloud: Callable[..., Cloud], channel: Channel
) -> None:
    cloud = make_cloud()
    cloud.start_manager()
    add_host(cloud, "qemu", uri="qemu:///system")
    cloud.cli("channel", "add", channel.url, "--key", channel.token)
    listed = json.loads(cloud.cli("--json", "appliance", "list").stdout)
    assert {a["name"] for a in listed} >= {"lamina-base", "webserv", "dnsserv"}

    # Installing an application brings its substrate; the second shares it.
    cloud.cli("appliance", "install", "webserv")
    cloud.cli("appliance", "install", "dnsserv")
    installed = json.loads(cloud.cli("--json", "appliance", "list", "--installed").stdout)
    assert sorted(a["name"] for a in installed) == ["dnsserv", "lamina-base", "webserv"]

    # Bad variables: refused before anything is created.
    bad = cloud.cli(
        "appliance", "deploy", "webserv", "--name", "bad", "--var", "domain=www.example.org",
        "--var", "port=eighty", "--var", "colour=blue", check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "eighty" in bad.stderr and "colour" in bad.stderr
    assert json.loads(cloud.cli("--json", "instance", "list").stdout) == []

    web = json.loads(
        cloud.cli(
            "--json",
            "appliance",
            "deploy",
            "webserv",
            "--name",
            "web1",
            "--var",
            "domain=www.example.org",
            "--var",
            "port=8080",
        ).stdout  # fmt: skip
    )["instance"]
    dns = json.loads(
        cloud.cli(
            "--json",
            "appliance",
            "deploy",
            "dnsserv",
            "--name",
            "dns1",
            "--var",
            "domain=example.org",
            "--var",
            "address=192.0.2.53",
        ).stdout  # fmt: skip
    )["instance"]
    try:
        # One substrate layer on the host, shared by both instances' guests.
        assert web["layers"][0]["sha256"] == dns["layers"][0]["sha256"]
        assert len(web["layers"]) == len(dns["layers"]) == 2
        first = _wait_ready(cloud, "web1")
        assert "lamina-base: release lamina-base 1.0.0" in first  # the substrate layer
        assert "webserv: serving www.example.org on port 8080" in first  # app layer + variable
        assert "lamina-base: boot 1" in first
        site = _site_id(first)
        dns_console = _wait_ready(cloud, "dns1")
        assert "lamina-base: release lamina-base 1.0.0" in dns_console
        assert "dnsserv: example.org -> 192.0.2.53" in dns_console
        _act(cloud, "dns1", "stop")

        # The instance layer survives a stop and start; templates are not rendered again.
        _act(cloud, "web1", "stop")
        _act(cloud, "web1", "start")
        second = _wait_ready(cloud, "web1")
        assert "lamina-base: boot 2" in second and _site_id(second) == site
        assert "lamina-init: rendered" in first and "lamina-init: rendered" not in second

        # Capture: what web1 made of itself (its site id) goes into a deployment layer; a new
        # instance of the captured appliance starts with it and renders its own variables.
        _act(cloud, "web1", "stop")
        refused = cloud.cli("appliance", "capture", "dns9", "--as", "x", check=False)
        assert refused.returncode != 0
        cloud.cli("appliance", "capture", "web1", "--as", "webserv-acme")
        acme = json.loads(
            cloud.cli(
                "--json",
                "appliance",
                "deploy",
                "webserv-acme",
                "--name",
                "web2",
                "--var",
                "domain=acme.example.org",
            ).stdout  # fmt: skip
        )["instance"]
        assert len(acme["layers"]) == 3 and acme["layers"][:2] == web["layers"]
        captured = _wait_ready(cloud, "web2")
        assert _site_id(captured) == site
        assert "webserv: serving acme.example.org on port 80" in captured
        assert "lamina-base: boot 1" in captured  # the boot counter is not configuration
        _act(cloud, "web2", "stop")

        # A new substrate version: installed once, it reaches both applications at their next
        # start, without touching their application or instance layers.
        channel.add_substrate("1.1.0")
        cloud.cli("channel", "refresh", _channel_id(cloud))
        cloud.cli("appliance", "upgrade", "lamina-base")
        again = cloud.cli("appliance", "upgrade", "lamina-base", check=False)
        assert again.returncode == 1 and "up to date" in again.stderr
        _act(cloud, "web1", "start")
        _act(cloud, "dns1", "start")
        upgraded = _wait_ready(cloud, "web1")
        assert "lamina-base: release lamina-base 1.1.0" in upgraded
        assert "lamina-base: boot 3" in upgraded and _site_id(upgraded) == site
        assert "webserv: serving www.example.org on port 8080" in upgraded
        dns_upgraded = _wait_ready(cloud, "dns1")
        assert "lamina-base: release lamina-base 1.1.0" in dns_upgraded
        assert "dnsserv: example.org -> 192.0.2.53" in dns_upgraded
        with cloud.client() as client:
            assert client.instance("web1")["layers"][1] == web["layers"][1]
            assert client.instance("web1")["layers"][0] != web["layers"][0]
    finally:
        with cloud.client() as client:
            for vm in client.instances():
                client.wait_job(client.delete_instance(vm["id"])["id"], timeout=120)


def _channel_id(cloud: Cloud) -> str:
    [row] = json.loads(cloud.cli("--json", "channel", "list").stdout)
    return str(row["id"])
