"""Addresses on a network: checking CIDRs and requested addresses, allocating free ones and
MACs. Plain functions over ``ipaddress``; the unique keys of ``network_ports`` make the
allocation safe under concurrent requests (a loser retries or gets a 409)."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable

from lamina.errors import Conflict, InvalidRequest

#: Prefix lengths a network may have: /29 still leaves 5 addresses for guests.
MIN_PREFIX, MAX_PREFIX = 8, 29


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """The IPv4 network ``text`` names, in canonical form; ``InvalidRequest`` saying what is
    wrong otherwise (not IPv4, host bits set, too small or too large)."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidRequest(f"cidr {text!r} is not a network address: {exc}", cidr=text) from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise InvalidRequest(f"cidr {text!r}: only IPv4 networks are supported", cidr=text)
    if not MIN_PREFIX <= network.prefixlen <= MAX_PREFIX:
        raise InvalidRequest(
            f"cidr {text!r}: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}", cidr=text
        )
    if network.is_loopback or network.is_multicast or network.is_link_local:
        raise InvalidRequest(
            f"cidr {text!r} is a loopback, link-local or multicast range", cidr=text
        )
    return network


def overlapping(
    network: ipaddress.IPv4Network, others: Iterable[tuple[str, str]]
) -> tuple[str, str] | None:
    """The first ``(name, cidr)`` of ``others`` whose range overlaps ``network``."""
    for name, cidr in others:
        if network.overlaps(ipaddress.ip_network(cidr)):
            return name, cidr
    return None


def gateway(network: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The first usable address: the first host's service address, the guests' gateway."""
    return network.network_address + 1


def check_requested(network: ipaddress.IPv4Network, text: str) -> str:
    """A requested address, checked: an IPv4 address inside the network, neither its network
    nor broadcast address nor the gateway. (Whether it is free is the database's answer.)"""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidRequest(f"ip {text!r} is not an IPv4 address", ip=text) from None
    if not isinstance(address, ipaddress.IPv4Address) or address not in network:
        raise InvalidRequest(f"ip {text} is outside the network's {network}", ip=text)
    if address in (network.network_address, network.broadcast_address):
        which = "network" if address == network.network_address else "broadcast"
        raise InvalidRequest(f"ip {text} is the network's {which} address", ip=text)
    if address == gateway(network):
        raise Conflict(f"ip {text} is the network's gateway", ip=text)
    return str(address)


def first_free(
    network: ipaddress.IPv4Network, taken: Iterable[str], *, service: bool = False
) -> str:
    """The lowest address not in ``taken``. A service address (a host's) may be the gateway;
    an instance's never is. ``Conflict`` when the network is full."""
    used = {ipaddress.ip_address(a) for a in taken}
    start = gateway(network) if service else gateway(network) + 1
    candidate = start
    while candidate < network.broadcast_address:
        if candidate not in used:
            return str(candidate)
        candidate += 1
    raise Conflict(f"network {network} has no free address left", cidr=str(network))


def new_mac() -> str:
    """A random MAC under QEMU's locally administered prefix 52:54:00."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
