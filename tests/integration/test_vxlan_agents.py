"""Networks across hosts at the agent, for real and without a manager or guests: two
"hosts" (network namespaces joined by a veth, the underlay), each converging with
``NetworkHost.apply`` run inside it, each with the agent's own namespace for bridges and
dnsmasq, and client namespaces standing for guests on the bridges.

- a network on both hosts: its VXLAN devices flood to each other; each client gets its
  address from its own host's dnsmasq (the other host never sees the request), resolves
  the other by name and pings it across the hosts;
- a second network (another VNI) on the same hosts: a client on it, even with an address
  in the first network's range, reaches neither;
- a host whose state lists no peers any more loses its VXLAN device, and the clients
  each other."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness import wait_until
from namespaces import Namespaces, in_ns, sh

from lamina.agent.bridges import vxlan_name
from lamina.wire.protocol import DhcpHost, DnsRecord, NetworkSpec, NetworkState, bridge_name

pytestmark = pytest.mark.integration

LAN = "net-0000000000a1a1a1"
OTHER = "net-0000000000b2b2b2"
UNDERLAY = ("10.231.0.11", "10.231.0.12")
MACS = ("52:54:00:a1:00:01", "52:54:00:a1:00:02", "52:54:00:b2:00:01")
APPLY = """
import sys
from pathlib import Path
from lamina.agent.networks import NetworkConfig, NetworkHost
from lamina.wire.protocol import NetworkState
root, namespace = Path(sys.argv[1]), sys.argv[2]
host = NetworkHost(root, NetworkConfig(namespace=namespace), root / "tls", lambda: "vxtest")
for info in host.apply(NetworkState.model_validate_json(sys.stdin.read())):
    print(info.model_dump_json())
"""


def _spec(network: str, name: str, cidr: str, vni: int, local: str, peers: list[str],
          hosts: list[DhcpHost]) -> NetworkSpec:  # fmt: skip
    zone = f"{name}.lamina.internal"
    return NetworkSpec(
        network=network, name=name, cidr=cidr, address=cidr.replace("0/24", "1"), domain=zone,
        mode="isolated", hosts=hosts, vni=vni, local=local, peers=peers, mtu=1450,
        records=[DnsRecord(name=f"{h.hostname}.{zone}", type="A", value=h.ip) for h in hosts],
    )  # fmt: skip


def _apply(host_ns: str, root: Path, agent_ns: str, state: NetworkState) -> list[dict[str, str]]:
    done = subprocess.run(
        ["ip", "netns", "exec", host_ns, sys.executable, "-c", APPLY, str(root), agent_ns],
        input=state.model_dump_json(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _dhcp(client: str) -> str:
    """The address busybox udhcpc gets on the client's eth0 (and sets)."""
    script = Path("/tmp") / f"{client}.udhcpc"
    script.write_text(
        '#!/bin/sh\n[ "$1" = bound ] && ip addr add "$ip/$mask" dev "$interface" '
        '&& ip link set dev "$interface" mtu "${mtu:-1500}"\nexit 0\n'
    )
    script.chmod(0o755)
    try:
        in_ns(client, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "5", "-T", "2",
              "-s", str(script), timeout=60)  # fmt: skip
    finally:
        script.unlink()
    return in_ns(client, "ip", "-4", "-o", "addr", "show", "dev", "eth0")


def _ping(client: str, address: str) -> bool:
    return sh("ip", "netns", "exec", client, "busybox", "ping", "-c", "1", "-W", "2", address,
              check=False).returncode == 0  # fmt: skip


def test_a_network_spans_two_hosts(namespaces: Namespaces, open_dir: Path) -> None:
    h1, h2 = namespaces.make("h1"), namespaces.make("h2")
    a1, a2 = namespaces.make("a1"), namespaces.make("a2")
    end = namespaces.veth(h1, h2)
    sh("ip", "-n", h1, "addr", "add", f"{UNDERLAY[0]}/24", "dev", "eth0")
    sh("ip", "-n", h1, "link", "set", "eth0", "up")
    sh("ip", "-n", h2, "addr", "add", f"{UNDERLAY[1]}/24", "dev", end)
    sh("ip", "-n", h2, "link", "set", end, "up")
    guests = [
        DhcpHost(mac=MACS[0], ip="10.231.10.11", hostname="alpha"),
        DhcpHost(mac=MACS[1], ip="10.231.10.12", hostname="beta"),
    ]
    rogue = [DhcpHost(mac=MACS[2], ip="10.231.20.11", hostname="gamma")]

    def state(local: str, peer: list[str]) -> NetworkState:
        return NetworkState(
            networks=[
                _spec(LAN, "lan", "10.231.10.0/24", 101, local, peer, guests),
                _spec(OTHER, "other", "10.231.20.0/24", 102, local, peer, rogue),
            ]
        )

    roots = (open_dir / "h1", open_dir / "h2")
    infos = _apply(h1, roots[0], a1, state(UNDERLAY[0], [UNDERLAY[1]]))
    _apply(h2, roots[1], a2, state(UNDERLAY[1], [UNDERLAY[0]]))
    assert {i["network"]: (i["vxlan_device"], i["peers"]) for i in infos} == {
        LAN: (vxlan_name(LAN), [UNDERLAY[1]]),
        OTHER: (vxlan_name(OTHER), [UNDERLAY[1]]),
    }
    shown = json.loads(in_ns(a1, "ip", "-j", "-d", "link", "show", vxlan_name(LAN)))[0]
    data = shown["linkinfo"]["info_data"]
    assert (data["id"], data["local"], data["port"], shown["master"]) == (
        101, UNDERLAY[0], 4789, bridge_name(LAN),
    )  # fmt: skip
    # Both hosts' bridges of a network share one MAC and one address.
    macs = {json.loads(in_ns(a, "ip", "-j", "link", "show", bridge_name(LAN)))[0]["address"]
            for a in (a1, a2)}  # fmt: skip
    assert len(macs) == 1
    assert "table bridge lamina" in in_ns(a1, "nft", "list", "ruleset")

    alpha = namespaces.client("alpha", a1, bridge_name(LAN), MACS[0])
    beta = namespaces.client("beta", a2, bridge_name(LAN), MACS[1])
    gamma = namespaces.client("gamma", a1, bridge_name(OTHER), MACS[2])
    # Each gets its address from its own host: the other never hears the request.
    assert "10.231.10.11/24" in _dhcp(alpha)
    assert "10.231.10.12/24" in _dhcp(beta)
    assert "mtu 1450" in in_ns(alpha, "ip", "link", "show", "eth0")
    logs = [(r / LAN / "dnsmasq.log").read_text() for r in roots]
    assert MACS[0] in logs[0] and MACS[0] not in logs[1], logs
    assert MACS[1] in logs[1] and MACS[1] not in logs[0], logs

    # Names across the hosts (each host has the whole zone), and the path between them.
    answer = in_ns(alpha, "dig", "+short", "@10.231.10.1", "beta.lan.lamina.internal")
    assert answer.split() == ["10.231.10.12"]
    wait_until(lambda: _ping(alpha, "10.231.10.12"), 20, "alpha pings beta across hosts")
    assert _ping(beta, "10.231.10.11")

    # Another network on the same hosts: another VNI, no way into the first, even with an
    # address in its range.
    sh("ip", "-n", gamma, "addr", "add", "10.231.10.99/24", "dev", "eth0")
    assert not _ping(gamma, "10.231.10.12")
    assert not _ping(gamma, "10.231.10.11")

    # h1 alone again: its tunnel goes, and with it the way to beta.
    infos = _apply(h1, roots[0], a1, state(UNDERLAY[0], []))
    assert {i["vxlan_device"] for i in infos} == {None}
    assert vxlan_name(LAN) not in in_ns(a1, "ip", "link", "show")
    assert vxlan_name(LAN) not in in_ns(h1, "ip", "link", "show")
    in_ns(alpha, "ip", "neigh", "flush", "all")
    assert not _ping(alpha, "10.231.10.12")
    # And back: the device is made again and floods to h2.
    _apply(h1, roots[0], a1, state(UNDERLAY[0], [UNDERLAY[1]]))
    wait_until(lambda: _ping(alpha, "10.231.10.12"), 20, "alpha pings beta again")
    # The networks gone: bridges, tunnels and the bridge table with them.
    _apply(h1, roots[0], a1, NetworkState())
    _apply(h2, roots[1], a2, NetworkState())
    for agent_ns in (a1, a2):
        links = in_ns(agent_ns, "ip", "-br", "link", "show")
        assert "lmb" not in links and "lmx" not in links, links
        assert "lamina" not in in_ns(agent_ns, "nft", "list", "tables")
