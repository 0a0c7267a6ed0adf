"""The sample ``dnsserv`` deployed through Lamina on a Lamina network answers ``dig`` on its
network address (issue 14: the samples work as their names promise). The CLI installs and
deploys it; the agent's bridges, dnsmasq and guests (QEMU, TCG) live in a network namespace
the test makes, where ``dig`` runs: from the host's address on the network, and from an
address beyond it (on the namespace's loopback: the guest answers it through its default
route, the host). By default an instance answers its own network only; one whose
``allow_from`` names the address beyond answers that and not the network."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
from collections.abc import Callable

import pytest
from clouds import add_host
from harness import Cloud, dig, wait_until
from namespaces import in_ns
from test_layered_appliances import Channel, channel  # noqa: F401 - the module's fixture

from lamina.errors import LaminaError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (bind9-dnsutils)"),
]
BOOT = 180
INSIDE = "10.70.0.1"  # the host's address on the network (its gateway)
BEYOND = "10.99.0.1"  # an address of the host's outside every Lamina network


def test_dig_is_answered_by_dnsserv_on_its_network_address(
    make_cloud: Callable[..., Cloud],
    channel: Channel,  # noqa: F811 - the fixture imported above
    netns: str,
) -> None:
    cloud = make_cloud()
    cloud.start_manager()
    add_host(cloud, "qemu", uri="qemu:///system", LAMINA_AGENT__NETWORK_NAMESPACE=netns)
    client = cloud.client()
    client.add_channel(channel.url, channel.token)
    client.create_network("lan", "10.70.0.0/24")
    in_ns(netns, "ip", "addr", "add", f"{BEYOND}/32", "dev", "lo")
    cloud.cli("appliance", "install", "dnsserv")

    def deploy(name: str, ip: str, *variables: str) -> None:
        cloud.cli(
            "appliance", "deploy", "dnsserv", "--name", name, "--network", f"lan:{ip}",
            "--var", "domain=example.org", "--var", "address=192.0.2.53",
            "--var", "records=www=192.0.2.54", *variables,
        )  # fmt: skip

    mine, theirs = "10.70.0.40", "10.70.0.41"
    deploy("dns-mine", mine)
    deploy("dns-theirs", theirs, "--var", f"allow_from={BEYOND}/32")
    try:
        for name, ip, clients in (
            ("dns-mine", mine, "on its own networks"),
            ("dns-theirs", theirs, f"{BEYOND}/32"),
        ):
            wait_until(lambda n=name: "lamina-base: ready" in client.console(n)["data"], BOOT, name)
            console = client.console(name)["data"]
            assert "dnsserv: example.org -> 192.0.2.53" in console, console
            assert f"dnsserv: answering on {ip} (eth0)" in console, console
            assert f"dnsserv: clients {clients}" in console, console
        shown = json.loads(cloud.cli("--json", "instance", "show", "dns-mine").stdout)
        assert mine in json.dumps(shown["networks"]), shown

        ask = functools.partial(dig, ["ip", "netns", "exec", netns])
        # Its own network is answered, over UDP and TCP; an address beyond it is not.
        assert ask(mine, "example.org", INSIDE) == (
            "NOERROR",
            ["192.0.2.53"],
        )
        assert ask(mine, "example.org", INSIDE, "+tcp") == (
            "NOERROR",
            ["192.0.2.53"],
        )
        assert ask(mine, "www.example.org", INSIDE) == (
            "NOERROR",
            ["192.0.2.54"],
        )
        assert ask(mine, "nope.example.org", INSIDE) == (
            "NXDOMAIN",
            [],
        )
        assert ask(mine, "example.org", BEYOND) == ("no answer", [])
        # allow_from: the address named is answered (so the way back works), the network not.
        assert ask(theirs, "example.org", BEYOND) == (
            "NOERROR",
            ["192.0.2.53"],
        )
        assert ask(theirs, "example.org", INSIDE) == (
            "no answer",
            [],
        )
        assert ask(theirs, "example.org", INSIDE, "+tcp") == (
            "no answer",
            [],
        )
    finally:
        for name in ("dns-mine", "dns-theirs"):
            with contextlib.suppress(LaminaError):
                client.wait_job(client.delete_instance(name)["id"], timeout=120)
