"""The host's nftables rules for Lamina's networks: one table, ``inet lamina``, replaced
whole in one ``nft -f -`` transaction (so there is never a moment without it).

- forward: nothing crosses between Lamina bridges; an isolated network's traffic is never
  forwarded; a nat network's guests may open connections to anything but a Lamina bridge,
  and only replies come back to them. Traffic of a Lamina bridge no rule allows is dropped
  (a bridge the agent no longer knows stays closed).
- postrouting: a nat network's traffic leaving through a non-Lamina interface is
  masqueraded.
- input: from a Lamina bridge the host answers only DHCP and, on that network's own service
  address, DNS, the configuration-service relay (TCP 80) and ping; so a guest reaches
  neither another network's service address nor the host's other services.

Interfaces are matched by name (``lmb*`` is every Lamina bridge), so the rules hold for a
bridge before it exists and after it is gone.

A network that spans hosts has a second table, ``bridge lamina`` (``render_bridge_ruleset``):
every host answers its own guests with the same service address and bridge MAC, so nothing
of the service address may cross the tunnel (the VXLAN or VLAN device in the bridge): no
ARP for it, no DHCP, no frame from or to the bridge's MAC, either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lamina.agent.bridges import BRIDGE_PREFIX
from lamina.agent.netns import exec_argv

TABLE = "inet lamina"
BRIDGE_TABLE = "bridge lamina"
LAMINA_BRIDGES = f'"{BRIDGE_PREFIX}*"'


@dataclass(frozen=True)
class FirewallNetwork:
    """What the rules need of one network."""

    bridge: str
    cidr: str
    address: str
    mode: str  # "nat" or "isolated"
    #: The bridge's MAC (the same on every host of the network).
    mac: str = ""
    #: The bridge's ports that lead to other hosts (its VXLAN and VLAN devices).
    tunnels: tuple[str, ...] = ()


def render_ruleset(networks: Sequence[FirewallNetwork]) -> str:
    """The ``nft -f`` input that replaces table ``inet lamina`` with the rules of
    ``networks`` (``add`` first, so that ``delete`` never fails)."""
    forward = [
        "type filter hook forward priority filter; policy accept;",
        # Within one bridge (seen here only where br_netfilter passes bridged frames).
        *(f'iifname "{n.bridge}" oifname "{n.bridge}" accept' for n in networks),
        f"iifname {LAMINA_BRIDGES} oifname {LAMINA_BRIDGES} drop",
    ]
    nat = [n for n in networks if n.mode == "nat"]
    forward += [f'oifname "{n.bridge}" ct state established,related accept' for n in nat]
    forward += [f'iifname "{n.bridge}" accept' for n in nat]
    forward += [f"iifname {LAMINA_BRIDGES} drop", f"oifname {LAMINA_BRIDGES} drop"]

    input_ = [
        "type filter hook input priority filter; policy accept;",
        f"iifname != {LAMINA_BRIDGES} accept",
        "ct state established,related accept",
        f"iifname {LAMINA_BRIDGES} udp dport 67 accept",
    ]
    for n in networks:
        match = f'iifname "{n.bridge}" ip daddr {n.address}'
        input_ += [
            f"{match} udp dport 53 accept",
            f"{match} tcp dport {{ 53, 80 }} accept",
            f"{match} icmp type echo-request accept",
        ]
    input_.append("drop")

    postrouting = [
        "type nat hook postrouting priority srcnat; policy accept;",
        *(f"ip saddr {n.cidr} oifname != {LAMINA_BRIDGES} masquerade" for n in nat),
    ]

    out = [f"add table {TABLE}", f"delete table {TABLE}", f"table {TABLE} {{"]
    for name, rules in (("forward", forward), ("input", input_), ("postrouting", postrouting)):
        out.append(f"\tchain {name} {{")
        out += [f"\t\t{rule}" for rule in rules]
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def render_bridge_ruleset(networks: Sequence[FirewallNetwork]) -> str:
    """The ``nft -f`` input that replaces table ``bridge lamina``: for each tunnel port of a
    network, the service address's ARP, DHCP and the bridge MAC's frames neither enter from
    it nor leave through it. Without tunnels: the table's removal."""
    prerouting = ["type filter hook prerouting priority filter; policy accept;"]
    forward = ["type filter hook forward priority filter; policy accept;"]
    output = ["type filter hook output priority filter; policy accept;"]
    for n in networks:
        for port in n.tunnels:
            into, out = f'iifname "{port}"', f'oifname "{port}"'
            prerouting += [
                f"{into} ether saddr {n.mac} drop",
                f"{into} ether daddr {n.mac} drop",
                f"{into} arp saddr ip {n.address} drop",
                f"{into} arp daddr ip {n.address} drop",
                f"{into} udp dport {{ 67, 68 }} drop",
            ]
            forward += [
                f"{out} ether daddr {n.mac} drop",
                f"{out} arp saddr ip {n.address} drop",
                f"{out} arp daddr ip {n.address} drop",
                f"{out} udp dport {{ 67, 68 }} drop",
            ]
            output.append(f"{out} ether saddr {n.mac} drop")
    out_lines = [f"add table {BRIDGE_TABLE}", f"delete table {BRIDGE_TABLE}"]
    if len(output) == 1:
        return "\n".join(out_lines) + "\n"
    out_lines.append(f"table {BRIDGE_TABLE} {{")
    for name, rules in (("prerouting", prerouting), ("forward", forward), ("output", output)):
        out_lines.append(f"\tchain {name} {{")
        out_lines += [f"\t\t{rule}" for rule in rules]
        out_lines.append("\t}")
    out_lines.append("}")
    return "\n".join(out_lines) + "\n"


def render_removal() -> str:
    """The ``nft -f`` input that removes the table (and is fine when it is not there)."""
    return f"add table {TABLE}\ndelete table {TABLE}\n"


def nft_argv(namespace: str) -> list[str]:
    """``nft`` reading a ruleset from its standard input, inside ``namespace``."""
    return exec_argv(namespace, ["nft", "-f", "-"])


def ip_forward_argv(namespace: str) -> list[str]:
    return exec_argv(namespace, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
