"""Networks across hosts on the agent's side: the VXLAN device's commands, its flooding
peers, the bridge rules that keep the service address off the tunnel, DHCP's MTU, and
floating forward addresses (argument lists and frames by equality; the real devices, rules
and guests are in tests/integration/test_networks_across_hosts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamina.agent import bridges, floating
from lamina.agent.bridges import Link
from lamina.agent.dnsmasq import RunAs, render_conf
from lamina.agent.firewall import FirewallNetwork, render_bridge_ruleset
from lamina.agent.networks import NetworkConfig, NetworkHost, check_state
from lamina.errors import InvalidRequest
from lamina.wire.protocol import NetworkSpec, NetworkState

NS = "lamina-t1"
NET = "net-0123456789abcdef"
BR = "lmb0123456789ab"
VX = "lmx0123456789ab"


def _spec(**kw: object) -> NetworkSpec:
    values: dict[str, object] = {
        "network": NET, "name": "lan", "cidr": "10.77.0.0/24", "address": "10.77.0.1",
        "domain": "lan.lamina.internal",
    }  # fmt: skip
    values.update(kw)
    return NetworkSpec.model_validate(values)


def test_names_and_the_shared_mac() -> None:
    assert bridges.vxlan_name(NET) == VX and len(VX) == 15
    # The same MAC on every host of the network, whatever the host's address.
    assert bridges.bridge_mac(NET) == bridges.bridge_mac(NET)


def test_a_new_vxlan_device_is_made_in_the_hosts_network_and_moved() -> None:
    assert bridges.vxlan_commands(NS, VX, 7, "10.98.0.11", BR, {}, {}) == [
        ["ip", "link", "add", "name", VX, "type", "vxlan", "id", "7", "dstport", "4789",
         "local", "10.98.0.11"],
        ["ip", "link", "set", "dev", VX, "netns", NS],
        ["ip", "-n", NS, "link", "set", "dev", VX, "master", BR, "up"],
    ]  # fmt: skip
    # On the host's own network it stays where it is made.
    assert bridges.vxlan_commands("", VX, 7, "10.98.0.11", BR, {}, {}) == [
        ["ip", "link", "add", "name", VX, "type", "vxlan", "id", "7", "dstport", "4789",
         "local", "10.98.0.11"],
        ["ip", "link", "set", "dev", VX, "master", BR, "up"],
    ]  # fmt: skip


def test_a_vxlan_device_converges() -> None:
    good = Link(VX, "vxlan", "x", True, master=BR, vni=7, local="10.98.0.11")
    assert bridges.vxlan_commands(NS, VX, 7, "10.98.0.11", BR, {VX: good}, {}) == []
    down = Link(VX, "vxlan", "x", False, vni=7, local="10.98.0.11")
    assert bridges.vxlan_commands(NS, VX, 7, "10.98.0.11", BR, {VX: down}, {}) == [
        ["ip", "-n", NS, "link", "set", "dev", VX, "master", BR, "up"],
    ]
    # Another underlay address (the tunnel address changed): made again.
    moved = bridges.vxlan_commands(NS, VX, 7, "10.98.0.12", BR, {VX: good}, {})
    assert moved[0] == ["ip", "-n", NS, "link", "del", "dev", VX]
    assert moved[1][-1] == "10.98.0.12"
    # One left behind in the host's network by an agent stopped halfway: removed first.
    left = {VX: Link(VX, "vxlan", "x", False, vni=7, local="10.98.0.11")}
    assert bridges.vxlan_commands(NS, VX, 7, "10.98.0.11", BR, {}, left)[0] == [
        "ip", "link", "del", "dev", VX,
    ]  # fmt: skip
    with pytest.raises(InvalidRequest, match="not a VXLAN device"):
        bridges.vxlan_commands(NS, VX, 7, "10.98.0.11", BR, {VX: Link(VX, "veth", "x", True)}, {})


def test_flooding_peers() -> None:
    text = json.dumps(
        [
            {"mac": "aa:39:7d:27:dd:cf", "flags": [], "master": BR, "state": "permanent"},
            {"mac": "00:00:00:00:00:00", "dst": "10.98.0.12", "flags": ["self"]},
            {"mac": "00:00:00:00:00:00", "dst": "10.98.0.13", "flags": ["self"]},
            {"mac": "52:54:00:00:00:01", "dst": "10.98.0.14", "flags": ["self"]},  # learnt
        ]
    )
    have = bridges.parse_flood_peers(text)
    assert have == {"10.98.0.12", "10.98.0.13"}
    assert bridges.flood_commands(NS, VX, have, ["10.98.0.13", "10.98.0.15"]) == [
        ["bridge", "-n", NS, "fdb", "append", "00:00:00:00:00:00", "dev", VX, "dst", "10.98.0.15"],
        ["bridge", "-n", NS, "fdb", "del", "00:00:00:00:00:00", "dev", VX, "dst", "10.98.0.12"],
    ]
    assert bridges.flood_commands(NS, VX, have, sorted(have)) == []
    assert bridges.fdb_argv("", VX) == ["bridge", "-j", "fdb", "show", "dev", VX]


def test_parse_links_reads_a_vxlan_device() -> None:
    text = json.dumps(
        [{"ifname": VX, "flags": ["UP"], "address": "aa:39:7d:27:dd:cf", "master": BR,
          "linkinfo": {"info_kind": "vxlan", "info_data": {"id": 42, "local": "10.98.0.11",
                                                          "port": 4789}},
          "addr_info": []}]
    )  # fmt: skip
    assert bridges.parse_links(text)[VX] == Link(
        VX, "vxlan", "aa:39:7d:27:dd:cf", True, master=BR, vni=42, local="10.98.0.11"
    )


def test_removing_a_bridge_takes_its_vxlan_device() -> None:
    found = {
        BR: Link(BR, "bridge", "m", True),
        VX: Link(VX, "vxlan", "x", True, master=BR, vni=7, local="10.98.0.11"),
    }
    assert bridges.removal_commands(NS, BR, found) == [
        ["ip", "-n", NS, "link", "del", "dev", VX],
        ["ip", "-n", NS, "link", "del", "dev", BR],
    ]


def test_bridge_rules_keep_the_service_address_off_the_tunnel() -> None:
    mac = bridges.bridge_mac(NET)
    net = FirewallNetwork(BR, "10.77.0.0/24", "10.77.0.1", "nat", mac=mac, tunnels=(VX,))
    alone = FirewallNetwork("lmbbbbbbbbbbbbb", "10.78.0.0/24", "10.78.0.1", "nat", mac="m")
    assert (
        render_bridge_ruleset([net, alone])
        == f"""\
add table bridge lamina
delete table bridge lamina
table bridge lamina {{
	chain prerouting {{
		type filter hook prerouting priority filter; policy accept;
		iifname "{VX}" ether saddr {mac} drop
		iifname "{VX}" ether daddr {mac} drop
		iifname "{VX}" arp saddr ip 10.77.0.1 drop
		iifname "{VX}" arp daddr ip 10.77.0.1 drop
		iifname "{VX}" udp dport {{ 67, 68 }} drop
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		oifname "{VX}" ether daddr {mac} drop
		oifname "{VX}" arp saddr ip 10.77.0.1 drop
		oifname "{VX}" arp daddr ip 10.77.0.1 drop
		oifname "{VX}" udp dport {{ 67, 68 }} drop
	}}
	chain output {{
		type filter hook output priority filter; policy accept;
		oifname "{VX}" ether saddr {mac} drop
	}}
}}
"""
    )  # noqa: W191, E101 - nft's tabs
    # No tunnel anywhere: the table goes.
    assert render_bridge_ruleset([alone]) == (
        "add table bridge lamina\ndelete table bridge lamina\n"
    )


def test_dhcp_sends_the_guests_mtu(tmp_path: Path) -> None:
    conf = render_conf(_spec(mtu=1450), tmp_path, RunAs("nobody", "nogroup"), upstream=False)
    assert "dhcp-option-force=option:mtu,1450\n" in conf
    conf = render_conf(_spec(), tmp_path, RunAs("nobody", "nogroup"), upstream=False)
    assert "option:mtu" not in conf


def test_tunnel_addresses_are_checked() -> None:
    ok = _spec(vni=7, local="10.98.0.11", peers=["10.98.0.12"])
    assert list(check_state(NetworkState(networks=[ok]))) == [NET]
    for bad in (_spec(vni=7, local="h1", peers=[]), _spec(vni=7, peers=["10.98.0.12; x"])):
        with pytest.raises(InvalidRequest, match="tunnel address"):
            check_state(NetworkState(networks=[bad]))


def test_which_networks_get_a_tunnel(tmp_path: Path) -> None:
    host = NetworkHost(tmp_path, NetworkConfig(namespace=NS), tmp_path)
    spanning = _spec(vni=7, local="10.98.0.11", peers=["10.98.0.12"])
    assert host._local(spanning) == "10.98.0.11" and host._tunnels(spanning) == (VX,)
    # Alone on this host (no peers), or no tunnel address known: no device.
    assert host._local(_spec(vni=7, local="10.98.0.11")) is None
    assert host._local(_spec(vni=7, peers=["10.98.0.12"])) is None
    # The agent's own setting wins over what the manager sends.
    mine = NetworkHost(tmp_path, NetworkConfig(namespace=NS, tunnel_address="192.0.2.1"), tmp_path)
    assert mine._local(spanning) == "192.0.2.1"
    assert mine._local(_spec(vni=7, peers=["10.98.0.12"])) == "192.0.2.1"


# -- floating addresses ----------------------------------------------------------------------

UPLINK = {
    "lo": Link("lo", None, "00:00:00:00:00:00", True, addresses=("127.0.0.1/8",)),
    "eth0": Link("eth0", "veth", "0a:00:00:00:00:0b", True, addresses=("10.98.0.11/24",)),
    BR: Link(BR, "bridge", "02:00:00:00:00:01", True, addresses=("10.77.0.1/24",)),
}


def test_what_floats_and_where() -> None:
    assert floating.is_fixed("127.0.0.1") and floating.is_fixed("0.0.0.0")
    assert not floating.is_fixed("10.98.0.100")
    assert floating.has_address("10.98.0.11", UPLINK)
    assert not floating.has_address("10.98.0.100", UPLINK)
    assert floating.floating_interface("10.98.0.100", UPLINK) == "eth0"
    # Never on a Lamina bridge (a guest network), nor off every network of the host.
    assert floating.floating_interface("10.77.0.50", UPLINK) is None
    assert floating.floating_interface("192.0.2.1", UPLINK) is None
    assert floating.add_argv("eth0", "10.98.0.100") == [
        "ip", "addr", "add", "10.98.0.100/32", "dev", "eth0",
    ]  # fmt: skip
    assert floating.del_argv("eth0", "10.98.0.100") == [
        "ip", "addr", "del", "10.98.0.100/32", "dev", "eth0",
    ]  # fmt: skip


def test_gratuitous_arp_frames() -> None:
    request, reply = floating.garp_frames("0a:00:00:00:00:0b", "10.98.0.100")
    mac, ip = bytes.fromhex("0a000000000b"), bytes([10, 98, 0, 100])
    assert request == (
        b"\xff" * 6 + mac + b"\x08\x06"
        + b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + ip + b"\x00" * 6 + ip
    )  # fmt: skip
    assert reply[:14] == b"\xff" * 6 + mac + b"\x08\x06"
    assert reply[14 + 6 : 14 + 8] == b"\x00\x02" and reply[-4:] == ip
    assert len(request) == len(reply) == 42
