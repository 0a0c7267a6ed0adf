"""Networks used by real guests (the issue's "done when"): the sample channel's appliances
under QEMU, their bridges, dnsmasq and the configuration-service relay in a network
namespace the test makes, reached from the test only through port forwards on 127.0.0.1
and ``ip netns exec``.

- alpha and beta (``netprobe``) on one network get their addresses by DHCP, resolve each
  other's names and ``lamina.local``, ping each other, fetch their own configuration over
  JSON and XML-RPC and are refused each other's;
- gamma, on an isolated second network, reaches neither;
- ``dig`` against the network's dnsmasq shows the MX record of the deployed mail appliance,
  which takes a message sent with smtplib through a port forward;
- the web appliance's page comes back through its port forward."""

from __future__ import annotations

import contextlib
import re
import smtplib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from clouds import add_host
from harness import Cloud, wait_until
from namespaces import in_ns
from test_layered_appliances import Channel, channel  # noqa: F401 - the module's fixture

from lamina.client import Client
from lamina.errors import LaminaError

pytestmark = pytest.mark.integration
BOOT = 180


def _done(client: Client, answer: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    job = client.wait_job(answer["job"]["id"], timeout=timeout)
    assert job["status"] == "succeeded", job
    return job


def _deploy(client: Client, appliance: str, name: str, network: str, ip: str,
            **variables: str) -> None:  # fmt: skip
    answer = client.deploy_appliance(
        appliance, name, variables, networks=[{"network": network, "ip": ip}]
    )
    _done(client, answer)


def _ready(client: Client, name: str) -> str:
    wait_until(lambda: "lamina-base: ready" in client.console(name)["data"], BOOT, f"{name} up")
    return str(client.console(name)["data"])


def _published(client: Client, name: str, port: int) -> str:
    answer = client.expose(name, port)
    _done(client, answer, timeout=60)
    (forward,) = [f for f in client.forwards(name) if f["guest_port"] == port]
    assert forward["status"] == "active" and forward["address"].startswith("127.0.0.1:")
    return str(forward["address"])


def _probe(address: str) -> str:
    """The probe run again, now that every guest is up: its lines, through the forward."""

    def run() -> str | None:
        answer = httpx.get(f"http://{address}/cgi-bin/probe", timeout=60)
        return (
            answer.text if answer.status_code == 200 and "netprobe: done" in answer.text else None
        )

    text: str = wait_until(run, 120, f"the probe at {address}", interval=2)
    return text


def test_guests_on_networks(
    make_cloud: Callable[..., Cloud],
    channel: Channel,  # noqa: F811 - the fixture imported above
    netns: str,
) -> None:
    cloud = make_cloud()
    cloud.start_manager()
    add_host(cloud, "qemu", uri="qemu:///system", LAMINA_AGENT__NETWORK_NAMESPACE=netns)
    client = cloud.client()
    client.add_channel(channel.url, channel.token)
    for appliance in ("netprobe", "mailserv", "webserv"):
        _done(client, client.install_appliance(appliance))
    client.create_network("lan", "10.70.0.0/24")
    client.create_network("iso", "10.71.0.0/24", mode="isolated")
    probe = "netprobe"
    _deploy(client, probe, "alpha", "lan", "10.70.0.10", names="beta beta.lan.lamina.internal",
            addresses="10.70.0.11", others="beta")  # fmt: skip
    _deploy(client, probe, "beta", "lan", "10.70.0.11", names="alpha", addresses="10.70.0.10",
            others="alpha")  # fmt: skip
    _deploy(client, probe, "gamma", "iso", "10.71.0.10", names="alpha.lan.lamina.internal",
            addresses="10.70.0.10 10.70.0.11 10.70.0.1")  # fmt: skip
    _deploy(client, "mailserv", "mail", "lan", "10.70.0.20", domain="example.org")
    _deploy(client, "webserv", "web", "lan", "10.70.0.30", domain="www.example.org")
    guests = ("alpha", "beta", "gamma", "mail", "web")
    try:
        consoles = {name: _ready(client, name) for name in guests}
        # DHCP gave each guest the address Lamina allocated, with the zone as search domain.
        assert re.search(
            r"lamina-base: eth0 10\.70\.0\.10/24 gw 10\.70\.0\.1 dns 10\.70\.0\.1 "
            r"domain lan\.lamina\.internal",
            consoles["alpha"],
        ), consoles["alpha"]
        assert re.search(r"lamina-base: eth0 10\.71\.0\.10/24 gw -", consoles["gamma"]), consoles[
            "gamma"
        ]

        alpha = _probe(_published(client, "alpha", 80))
        for line in (
            "netprobe: resolve beta -> 10.70.0.11",
            "netprobe: resolve beta.lan.lamina.internal -> 10.70.0.11",
            "netprobe: reach 10.70.0.11 ok",
            "netprobe: resolve lamina.local -> 10.70.0.1",
            "netprobe: config self ok alpha",
            "netprobe: config beta refused 403",
            "netprobe: rpc self ok",
            "netprobe: rpc beta refused",
            "netprobe: status ok",
        ):
            assert line in alpha, alpha
        beta = _probe(_published(client, "beta", 80))
        for line in (
            "netprobe: resolve alpha -> 10.70.0.10",
            "netprobe: reach 10.70.0.10 ok",
            "netprobe: config self ok beta",
            "netprobe: config alpha refused 403",
            "netprobe: rpc alpha refused",
        ):
            assert line in beta, beta
        gamma = _probe(_published(client, "gamma", 80))
        for line in (
            "netprobe: resolve alpha.lan.lamina.internal failed",
            "netprobe: reach 10.70.0.10 failed",
            "netprobe: reach 10.70.0.11 failed",
            "netprobe: reach 10.70.0.1 failed",
            "netprobe: resolve lamina.local -> 10.71.0.1",
            "netprobe: config self ok gamma",
        ):
            assert line in gamma, gamma
        assert client.instance("alpha")["guest_status"] == "probed"

        # alpha's name, once: from the zone, not again from the lease DHCP gave it.
        named = in_ns(netns, "dig", "+short", "@10.70.0.1", "alpha.lan.lamina.internal").split()
        assert named == ["10.70.0.10"], named

        # The mail appliance's MX record, from the network's dnsmasq.
        mx = in_ns(netns, "dig", "+short", "@10.70.0.1", "example.org", "MX").split()
        assert mx == ["10", "mail.lan.lamina.internal."], mx
        host, port = _published(client, "mail", 25).rsplit(":", 1)
        with smtplib.SMTP(host, int(port), timeout=60) as smtp:
            smtp.sendmail(
                "test@lamina.test", ["postmaster@example.org"], "Subject: hi\r\n\r\nhello\r\n"
            )
        wait_until(
            lambda: "mailserv: stored /var/mail/new/" in client.console("mail")["data"], 60,
            "the message stored",
        )  # fmt: skip

        page = httpx.get(f"http://{_published(client, 'web', 80)}/", timeout=30)
        assert page.status_code == 200 and "www.example.org" in page.text
    finally:
        for name in guests:
            with contextlib.suppress(LaminaError):
                client.wait_job(client.delete_instance(name)["id"], timeout=120)
