"""The agent's network commands (iproute2 argv, by equality), what it reads back from
``ip -j``, and the checks of a pushed state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamina.agent import bridges
from lamina.agent.bridges import Link
from lamina.agent.netns import exec_argv, ip_argv, netns_add_argv
from lamina.agent.networks import check_state
from lamina.errors import InvalidRequest
from lamina.wire.protocol import NetworkSpec, NetworkState, bridge_name, tap_name

NS = "lamina"
BR = "lmb0123456789ab"
MAC = "02:11:22:33:44:55"


def test_namespace_commands() -> None:
    assert ip_argv(NS, "link", "show") == ["ip", "-n", NS, "link", "show"]
    assert ip_argv("", "link", "show") == ["ip", "link", "show"]
    assert exec_argv(NS, ["nft", "-f", "-"]) == ["ip", "netns", "exec", NS, "nft", "-f", "-"]
    assert exec_argv("", ["nft"]) == ["nft"]
    assert netns_add_argv(NS) == ["ip", "netns", "add", NS]


def test_names() -> None:
    assert bridge_name("net-0123456789abcdef0123") == BR
    assert tap_name("52:54:00:ab:cd:ef") == "lmt525400abcdef"
    assert bridges.vlan_device("eth0", 42) == "eth0.42"
    with pytest.raises(InvalidRequest):
        bridges.vlan_device("enx0011223344", 4094)


def test_bridge_mac_is_stable_local_unicast_and_per_network() -> None:
    mac = bridges.bridge_mac("net-0123456789abcdef")
    assert mac == bridges.bridge_mac("net-0123456789abcdef")
    assert mac != bridges.bridge_mac("net-fedcba9876543210")
    first = int(mac.split(":")[0], 16)
    assert first == 0x02 and len(mac.split(":")) == 6


def test_new_bridge() -> None:
    assert bridges.bridge_commands(NS, BR, MAC, "10.77.0.1/24", None) == [
        ["ip", "-n", NS, "link", "add", "name", BR, "address", MAC, "type", "bridge"],
        ["ip", "-n", NS, "addr", "add", "10.77.0.1/24", "dev", BR],
        ["ip", "-n", NS, "link", "set", "dev", BR, "up"],
    ]


def test_existing_bridge_is_corrected_not_remade() -> None:
    right = Link(BR, "bridge", MAC, True, addresses=("10.77.0.1/24",))
    assert bridges.bridge_commands(NS, BR, MAC, "10.77.0.1/24", right) == []
    wrong = Link(BR, "bridge", "42:00:00:00:00:01", False, addresses=("10.66.0.1/16",))
    assert bridges.bridge_commands("", BR, MAC, "10.77.0.1/24", wrong) == [
        ["ip", "link", "set", "dev", BR, "address", MAC],
        ["ip", "addr", "del", "10.66.0.1/16", "dev", BR],
        ["ip", "addr", "add", "10.77.0.1/24", "dev", BR],
        ["ip", "link", "set", "dev", BR, "up"],
    ]
    with pytest.raises(InvalidRequest):
        bridges.bridge_commands(NS, BR, MAC, "10.77.0.1/24", Link(BR, "veth", MAC, True))


def test_vlan_device() -> None:
    found = {"eth1": Link("eth1", None, "aa:bb:cc:dd:ee:ff", False)}
    assert bridges.vlan_commands(NS, "eth1", 42, BR, found) == [
        ["ip", "-n", NS, "link", "set", "dev", "eth1", "up"],
        ["ip", "-n", NS, "link", "add", "link", "eth1", "name", "eth1.42", "type", "vlan",
         "id", "42"],
        ["ip", "-n", NS, "link", "set", "dev", "eth1.42", "master", BR, "up"],
    ]  # fmt: skip
    found["eth1"] = Link("eth1", None, "aa:bb:cc:dd:ee:ff", True)
    found["eth1.42"] = Link("eth1.42", "vlan", "x", True, master=BR, vlan_id=42, parent="eth1")
    assert bridges.vlan_commands(NS, "eth1", 42, BR, found) == []
    with pytest.raises(InvalidRequest, match="does not exist"):
        bridges.vlan_commands(NS, "eth9", 42, BR, found)
    found["eth1.7"] = Link("eth1.7", "veth", "x", True)
    with pytest.raises(InvalidRequest):
        bridges.vlan_commands(NS, "eth1", 7, BR, found)


def test_removal_takes_the_vlan_devices_with_it() -> None:
    found = {
        BR: Link(BR, "bridge", MAC, True),
        "eth1.42": Link("eth1.42", "vlan", "x", True, master=BR, vlan_id=42),
        "lmt525400000001": Link("lmt525400000001", "tun", "y", True, master=BR),
    }
    assert bridges.removal_commands(NS, BR, found) == [
        ["ip", "-n", NS, "link", "del", "dev", "eth1.42"],
        ["ip", "-n", NS, "link", "del", "dev", BR],
    ]
    assert bridges.removal_commands(NS, "lmbffffffffffff", found) == []


def test_plugging_a_tap() -> None:
    tap = "lmt525400000001"
    in_host = {tap: Link(tap, "tun", "fe:54:00:00:00:01", False)}
    # Still in the host's network: moved into the namespace, then into the bridge.
    assert bridges.plug_commands(NS, tap, BR, in_host, {}) == [
        ["ip", "link", "set", "dev", tap, "netns", NS],
        ["ip", "-n", NS, "link", "set", "dev", tap, "master", BR, "up"],
    ]
    inside = {tap: Link(tap, "tun", "fe:54:00:00:00:01", False)}
    assert bridges.plug_commands(NS, tap, BR, {}, inside) == [
        ["ip", "-n", NS, "link", "set", "dev", tap, "master", BR, "up"],
    ]
    inside = {tap: Link(tap, "tun", "fe:54:00:00:00:01", True, master=BR)}
    assert bridges.plug_commands(NS, tap, BR, {}, inside) == []
    assert bridges.plug_commands(NS, tap, BR, {}, {}) is None  # no tap (test driver)
    # On the host's own network libvirt plugs it; a bridge made again gets it back.
    assert bridges.plug_commands("", tap, BR, {}, in_host) == [
        ["ip", "link", "set", "dev", tap, "master", BR, "up"],
    ]


def test_parse_links() -> None:
    text = json.dumps(
        [
            {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "address": "00:00:00:00:00:00",
             "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": BR, "flags": ["BROADCAST", "UP", "LOWER_UP"], "address": MAC,
             "linkinfo": {"info_kind": "bridge", "info_data": {"stp_state": 0}},
             "addr_info": [
                 {"family": "inet", "local": "10.77.0.1", "prefixlen": 24},
                 {"family": "inet6", "local": "fe80::1", "prefixlen": 64},
             ]},
            {"ifname": "eth1.42", "flags": ["BROADCAST"], "address": "aa:bb:cc:dd:ee:ff",
             "master": BR, "link": "eth1",
             "linkinfo": {"info_kind": "vlan", "info_data": {"protocol": "802.1Q", "id": 42}},
             "addr_info": []},
        ]
    )  # fmt: skip
    found = bridges.parse_links(text)
    assert found["lo"] == Link("lo", None, "00:00:00:00:00:00", True, addresses=("127.0.0.1/8",))
    assert found[BR] == Link(BR, "bridge", MAC, True, addresses=("10.77.0.1/24",))
    assert found["eth1.42"] == Link(
        "eth1.42", "vlan", "aa:bb:cc:dd:ee:ff", False, master=BR, vlan_id=42, parent="eth1"
    )
    assert bridges.lamina_bridges(found) == [BR]
    assert bridges.interface_address("10.77.0.1", "10.77.0.0/24") == "10.77.0.1/24"


def _spec(network: str, cidr: str, address: str, **kw: object) -> NetworkSpec:
    return NetworkSpec(
        network=network, name="n", cidr=cidr, address=address, domain="n.lamina.internal", **kw
    )  # type: ignore[arg-type]


def test_check_state() -> None:
    a = _spec("net-a000000000000001", "10.77.0.0/24", "10.77.0.1")
    b = _spec("net-b000000000000001", "10.78.0.0/24", "10.78.0.1", mode="isolated")
    assert list(check_state(NetworkState(networks=[a, b]))) == [a.network, b.network]
    assert check_state(NetworkState()) == {}
    bad = [
        [a, a],
        [a, _spec("net-b000000000000001", "10.77.0.128/25", "10.77.0.129")],  # overlap
        [a, _spec("net-a000000000000002", "10.79.0.0/24", "10.79.0.1")],  # same bridge
        [_spec("net-a000000000000001", "10.77.0.0/24", "10.77.0.1", config_service_url="x")],
    ]
    for networks in bad:
        with pytest.raises(InvalidRequest):
            check_state(NetworkState(networks=networks))


def test_a_bridge_is_tagged_with_its_deployment() -> None:
    alias = bridges.bridge_alias("aaaaaaaaaaaaaaaa", "net-0123456789abcdef")
    assert alias == "lamina:aaaaaaaaaaaaaaaa:net-0123456789abcdef"
    assert bridges.alias_deployment(alias) == "aaaaaaaaaaaaaaaa"
    assert bridges.alias_deployment(None) is None
    assert bridges.alias_deployment("uplink to the rack") is None
    assert bridges.bridge_alias(None, "net-0123456789abcdef") is None
    assert bridges.bridge_commands(NS, BR, MAC, "10.77.0.1/24", None, alias) == [
        ["ip", "-n", NS, "link", "add", "name", BR, "address", MAC, "type", "bridge"],
        ["ip", "-n", NS, "link", "set", "dev", BR, "alias", alias],
        ["ip", "-n", NS, "addr", "add", "10.77.0.1/24", "dev", BR],
        ["ip", "-n", NS, "link", "set", "dev", BR, "up"],
    ]
    # An untagged bridge of ours (made before bridges were tagged) gets its tag.
    untagged = Link(BR, "bridge", MAC, True, addresses=("10.77.0.1/24",))
    assert bridges.bridge_commands(NS, BR, MAC, "10.77.0.1/24", untagged, alias) == [
        ["ip", "-n", NS, "link", "set", "dev", BR, "alias", alias],
    ]
    tagged = Link(BR, "bridge", MAC, True, addresses=("10.77.0.1/24",), alias=alias)
    assert bridges.bridge_commands(NS, BR, MAC, "10.77.0.1/24", tagged, alias) == []
    # Another deployment's bridge is never taken over.
    theirs = bridges.bridge_alias("bbbbbbbbbbbbbbbb", "net-0123456789abcdef")
    other = Link(BR, "bridge", MAC, True, addresses=("10.77.0.1/24",), alias=theirs)
    with pytest.raises(InvalidRequest, match="belongs to Lamina deployment bbbbbbbbbbbbbbbb"):
        bridges.bridge_commands(NS, BR, MAC, "10.77.0.1/24", other, alias)


def test_parse_links_reads_the_alias() -> None:
    text = json.dumps(
        [{"ifname": BR, "flags": ["UP"], "address": MAC, "ifalias": "lamina:ab:net-1",
          "linkinfo": {"info_kind": "bridge"}, "addr_info": []}]
    )  # fmt: skip
    assert bridges.parse_links(text)[BR].alias == "lamina:ab:net-1"


def test_only_this_deployments_bridges_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two Lamina deployments on one host (or namespace): converging one's networks removes
    its own bridges of networks it no longer has, never the other's, nor an untagged bridge
    it did not make."""
    from lamina.agent import networks
    from lamina.agent.networks import NetworkConfig, NetworkHost

    mine, theirs = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
    found = {
        name: Link(name, "bridge", MAC, True, alias=alias)
        for name, alias in (
            ("lmb000000000001", bridges.bridge_alias(mine, "net-000000000001")),
            ("lmb000000000002", bridges.bridge_alias(theirs, "net-000000000002")),
            ("lmb000000000003", None),  # untagged, in this agent's last state
            ("lmb000000000004", None),  # untagged, not this agent's
        )
    }
    removed: list[list[str]] = []
    monkeypatch.setattr(networks.bridges, "links", lambda namespace: found)
    monkeypatch.setattr(networks.bridges, "run_all", lambda commands: removed.extend(commands))
    host = NetworkHost(tmp_path, NetworkConfig(namespace=NS), tmp_path / "tls", lambda: mine)
    host._remove_others(set(), made={"lmb000000000003"})
    assert removed == [
        ["ip", "-n", NS, "link", "del", "dev", "lmb000000000001"],
        ["ip", "-n", NS, "link", "del", "dev", "lmb000000000003"],
    ]
