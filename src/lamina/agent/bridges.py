"""Bridges, VLAN and VXLAN devices and guests' taps, with iproute2.

Builders return argument lists (tested by equality); ``links()`` reads what a namespace
has (``ip -j -d addr show``) and the ``ensure_*`` functions run only the commands that
make it what it should be, so converging twice changes nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from lamina.agent.netns import COMMAND_TIMEOUT, ip_argv
from lamina.commands import run
from lamina.errors import InvalidRequest, LaminaError
from lamina.wire.protocol import bridge_name

log = logging.getLogger(__name__)

BRIDGE_PREFIX = "lmb"
TAP_PREFIX = "lmt"
VXLAN_PREFIX = "lmx"
#: IANA's VXLAN port.
VXLAN_PORT = 4789
#: What a VXLAN packet adds to the frame it carries (outer IPv4 20, UDP 8, VXLAN 8,
#: inner Ethernet 14): a guest's MTU is the underlay's less this.
VXLAN_OVERHEAD = 50
#: The FDB entry that floods broadcast, unknown unicast and multicast to a peer.
FLOOD_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class Link:
    """One network interface as ``ip -j -d addr show`` reports it."""

    name: str
    kind: str | None  # "bridge", "vlan", "tun", "veth", ... (None for a plain device)
    mac: str
    up: bool
    master: str | None = None
    #: IPv4 addresses with their prefix, e.g. ``10.77.0.1/24``.
    addresses: tuple[str, ...] = ()
    #: For a VLAN device: its tag and the device it sits on.
    vlan_id: int | None = None
    parent: str | None = None
    #: Its ``ifalias``: a Lamina bridge's says which deployment made it (``bridge_alias``).
    alias: str | None = None
    #: For a VXLAN device: its id and underlay address.
    vni: int | None = None
    local: str | None = None


def parse_links(text: str) -> dict[str, Link]:
    """Name -> ``Link`` from the JSON of ``ip -j -d addr show``."""
    found = {}
    for entry in json.loads(text or "[]"):
        info = entry.get("linkinfo") or {}
        data = info.get("info_data") or {}
        addresses = tuple(
            f"{a['local']}/{a['prefixlen']}"
            for a in entry.get("addr_info", [])
            if a.get("family") == "inet"
        )
        kind = info.get("info_kind")
        found[entry["ifname"]] = Link(
            name=entry["ifname"],
            kind=kind,
            mac=entry.get("address", ""),
            up="UP" in entry.get("flags", []),
            master=entry.get("master"),
            addresses=addresses,
            vlan_id=int(data["id"]) if kind == "vlan" and "id" in data else None,
            parent=entry.get("link") if kind == "vlan" else None,
            alias=entry.get("ifalias") or None,
            vni=int(data["id"]) if kind == "vxlan" and "id" in data else None,
            local=data.get("local") if kind == "vxlan" else None,
        )
    return found


def links_argv(namespace: str) -> list[str]:
    return ip_argv(namespace, "-j", "-d", "addr", "show")


def links(namespace: str) -> dict[str, Link]:
    """Every interface of ``namespace`` ("" for the host's own network)."""
    return parse_links(run(links_argv(namespace), COMMAND_TIMEOUT))


# -- builders ----------------------------------------------------------------------------


def bridge_mac(network: str) -> str:
    """A stable, locally administered MAC for a network's bridge, the same on every host.

    A bridge otherwise takes the lowest MAC of its ports, so it would change as guests come
    and go (and guests' ARP caches would go stale). Every host of a network answers its own
    guests with the same service address and this same MAC (the bridge rules of
    ``lamina.agent.firewall`` keep both off the tunnel), so a guest moved to another host
    finds its gateway, DNS server and ``lamina.local`` unchanged."""
    digest = hashlib.sha256(network.encode()).hexdigest()
    return "02:" + ":".join(digest[i : i + 2] for i in range(0, 10, 2))


def vxlan_name(network: str) -> str:
    """The VXLAN device of a network on every host: ``lmx`` + 12 hex digits of its id."""
    return VXLAN_PREFIX + bridge_name(network).removeprefix(BRIDGE_PREFIX)


def vlan_device(uplink: str, vlan: int) -> str:
    """``<uplink>.<vid>``; raises ``InvalidRequest`` when that is longer than the kernel's
    15-character limit for an interface name."""
    name = f"{uplink}.{vlan}"
    if len(name) > 15:
        raise InvalidRequest(
            f"VLAN device {name!r} would be longer than 15 characters: choose a shorter "
            "agent.network_uplink",
            device=name,
        )
    return name


ALIAS_PREFIX = "lamina:"


def bridge_alias(deployment: str | None, network: str) -> str | None:
    """The ``ifalias`` tagging a network's bridge with the deployment that made it
    (``lamina:<deployment>:<network>``); None while the agent knows no deployment."""
    return f"{ALIAS_PREFIX}{deployment}:{network}" if deployment else None


def alias_deployment(alias: str | None) -> str | None:
    """The deployment named in a bridge's ``ifalias``, or None (untagged)."""
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    return alias.removeprefix(ALIAS_PREFIX).split(":", 1)[0] or None


def set_alias_argv(namespace: str, device: str, alias: str) -> list[str]:
    return ip_argv(namespace, "link", "set", "dev", device, "alias", alias)


def bridge_add_argv(namespace: str, bridge: str, mac: str) -> list[str]:
    return ip_argv(namespace, "link", "add", "name", bridge, "address", mac, "type", "bridge")


def set_mac_argv(namespace: str, device: str, mac: str) -> list[str]:
    return ip_argv(namespace, "link", "set", "dev", device, "address", mac)


def addr_add_argv(namespace: str, device: str, address: str) -> list[str]:
    """``address`` is ``a.b.c.d/prefix``."""
    return ip_argv(namespace, "addr", "add", address, "dev", device)


def addr_del_argv(namespace: str, device: str, address: str) -> list[str]:
    return ip_argv(namespace, "addr", "del", address, "dev", device)


def link_up_argv(namespace: str, device: str) -> list[str]:
    return ip_argv(namespace, "link", "set", "dev", device, "up")


def link_master_argv(namespace: str, device: str, bridge: str) -> list[str]:
    """Make ``device`` a port of ``bridge`` and bring it up."""
    return ip_argv(namespace, "link", "set", "dev", device, "master", bridge, "up")


def link_del_argv(namespace: str, device: str) -> list[str]:
    return ip_argv(namespace, "link", "del", "dev", device)


def vlan_add_argv(namespace: str, uplink: str, vlan: int) -> list[str]:
    name = vlan_device(uplink, vlan)
    return ip_argv(
        namespace, "link", "add", "link", uplink, "name", name, "type", "vlan", "id", str(vlan)
    )


def link_netns_argv(device: str, namespace: str) -> list[str]:
    """Move ``device`` from the host's network into ``namespace``."""
    return ["ip", "link", "set", "dev", device, "netns", namespace]


def bridge_commands(
    namespace: str,
    bridge: str,
    mac: str,
    address: str,
    current: Link | None,
    alias: str | None = None,
) -> list[list[str]]:
    """What makes ``bridge`` exist with ``mac``, only ``address`` (IPv4, with its prefix),
    tagged with ``alias`` (if given) and up, given what it is now. Raises ``InvalidRequest``
    when the name is taken by a device that is not a bridge, or by another deployment's."""
    if current is not None and current.kind != "bridge":
        raise InvalidRequest(f"{bridge} exists and is not a bridge ({current.kind})")
    owner = alias_deployment(current.alias) if current is not None else None
    if owner is not None and owner != alias_deployment(alias):
        raise InvalidRequest(f"{bridge} exists and belongs to Lamina deployment {owner}")
    commands = []
    if current is None:
        commands.append(bridge_add_argv(namespace, bridge, mac))
    elif current.mac.lower() != mac:
        commands.append(set_mac_argv(namespace, bridge, mac))
    if alias is not None and (current is None or current.alias != alias):
        commands.append(set_alias_argv(namespace, bridge, alias))
    have = current.addresses if current else ()
    commands += [addr_del_argv(namespace, bridge, a) for a in have if a != address]
    if address not in have:
        commands.append(addr_add_argv(namespace, bridge, address))
    if current is None or not current.up:
        commands.append(link_up_argv(namespace, bridge))
    return commands


def vlan_commands(
    namespace: str, uplink: str, vlan: int, bridge: str, found: dict[str, Link]
) -> list[list[str]]:
    """What puts ``<uplink>.<vlan>`` in ``bridge``, up. Raises ``InvalidRequest`` when the
    uplink is missing or the name is taken by another kind of device."""
    name = vlan_device(uplink, vlan)
    parent = found.get(uplink)
    if parent is None:
        raise InvalidRequest(f"the uplink {uplink} does not exist", uplink=uplink)
    commands = []
    if not parent.up:
        commands.append(link_up_argv(namespace, uplink))
    current = found.get(name)
    if current is not None and (current.kind != "vlan" or current.vlan_id != vlan):
        raise InvalidRequest(f"{name} exists and is not VLAN {vlan} of {uplink}", device=name)
    if current is None:
        commands.append(vlan_add_argv(namespace, uplink, vlan))
    if current is None or current.master != bridge or not current.up:
        commands.append(link_master_argv(namespace, name, bridge))
    return commands


def removal_commands(namespace: str, bridge: str, found: dict[str, Link]) -> list[list[str]]:
    """What removes ``bridge`` and the VLAN and VXLAN devices in it (guests' taps leave it
    with it)."""
    if bridge not in found:
        return []
    ports = sorted(
        link.name
        for link in found.values()
        if link.master == bridge and link.kind in ("vlan", "vxlan")
    )
    return [link_del_argv(namespace, p) for p in ports] + [link_del_argv(namespace, bridge)]


# -- VXLAN (a network across hosts) --------------------------------------------------------


def bridge_argv(namespace: str, *args: str) -> list[str]:
    """``bridge`` with ``args``, acting inside ``namespace``."""
    return ["bridge", "-n", namespace, *args] if namespace else ["bridge", *args]


def vxlan_add_argv(device: str, vni: int, local: str) -> list[str]:
    """Make the VXLAN device in the host's own network, where the underlay address is: its
    UDP socket stays there when the device moves into the agent's namespace. No group and
    no ``remote``: it floods by head-end replication, to the peers of its FDB."""
    return [
        "ip", "link", "add", "name", device, "type", "vxlan", "id", str(vni),
        "dstport", str(VXLAN_PORT), "local", local,
    ]  # fmt: skip


def fdb_argv(namespace: str, device: str) -> list[str]:
    return bridge_argv(namespace, "-j", "fdb", "show", "dev", device)


def parse_flood_peers(text: str) -> set[str]:
    """The peers a VXLAN device floods to: the ``dst`` of its all-zeros FDB entries, from
    the JSON of ``bridge -j fdb show dev <device>``."""
    return {
        str(entry["dst"])
        for entry in json.loads(text or "[]")
        if entry.get("mac") == FLOOD_MAC and entry.get("dst")
    }


def flood_add_argv(namespace: str, device: str, peer: str) -> list[str]:
    return bridge_argv(namespace, "fdb", "append", FLOOD_MAC, "dev", device, "dst", peer)


def flood_del_argv(namespace: str, device: str, peer: str) -> list[str]:
    return bridge_argv(namespace, "fdb", "del", FLOOD_MAC, "dev", device, "dst", peer)


def vxlan_commands(
    namespace: str,
    device: str,
    vni: int,
    local: str,
    bridge: str,
    found: dict[str, Link],
    host: dict[str, Link],
) -> list[list[str]]:
    """What makes ``device`` a VXLAN device of ``vni`` on ``local``, a port of ``bridge``
    in ``namespace``, up (``found``: that namespace's links; ``host``: the host's own
    network's, when the namespace is another). A device with another id or address is made
    again; one left in the host's network (the agent stopped between making and moving it)
    is removed first. Raises ``InvalidRequest`` when the name is taken by another kind."""
    current = found.get(device)
    commands: list[list[str]] = []
    if current is not None and current.kind != "vxlan":
        raise InvalidRequest(f"{device} exists and is not a VXLAN device ({current.kind})")
    if current is not None and (current.vni != vni or current.local != local):
        commands.append(link_del_argv(namespace, device))
        current = None
    if current is None:
        if namespace and device in host:
            commands.append(link_del_argv("", device))
        commands.append(vxlan_add_argv(device, vni, local))
        if namespace:
            commands.append(link_netns_argv(device, namespace))
    if current is None or current.master != bridge or not current.up:
        commands.append(link_master_argv(namespace, device, bridge))
    return commands


def flood_commands(
    namespace: str, device: str, have: set[str], peers: Iterable[str]
) -> list[list[str]]:
    """What makes the device flood to exactly ``peers`` (``have``: to whom it floods now)."""
    wanted = set(peers)
    return [flood_add_argv(namespace, device, p) for p in sorted(wanted - have)] + [
        flood_del_argv(namespace, device, p) for p in sorted(have - wanted)
    ]


def plug_commands(
    namespace: str, tap: str, bridge: str, host: dict[str, Link], inside: dict[str, Link]
) -> list[list[str]] | None:
    """What puts a guest's tap into ``bridge`` (moving it into ``namespace`` first if it is
    still in the host's network); None when the tap is nowhere (the guest has none)."""
    if namespace and tap in host:
        return [link_netns_argv(tap, namespace), link_master_argv(namespace, tap, bridge)]
    current = inside.get(tap)
    if current is None:
        return None
    if current.master == bridge and current.up:
        return []
    return [link_master_argv(namespace, tap, bridge)]


def lamina_bridges(found: dict[str, Link]) -> list[str]:
    return sorted(
        n for n, link in found.items() if n.startswith(BRIDGE_PREFIX) and link.kind == "bridge"
    )


def interface_address(address: str, cidr: str) -> str:
    """``address/prefix`` of ``cidr``."""
    return f"{address}/{ipaddress.ip_network(cidr).prefixlen}"


# -- applying ----------------------------------------------------------------------------


def run_all(commands: Iterable[list[str]]) -> None:
    for argv in commands:
        run(argv, COMMAND_TIMEOUT)


def flood_peers(namespace: str, device: str) -> set[str]:
    """The peers ``device`` floods to now."""
    return parse_flood_peers(run(fdb_argv(namespace, device), COMMAND_TIMEOUT))


def ensure_vxlan(
    namespace: str, device: str, vni: int, local: str, bridge: str, peers: list[str]
) -> None:
    """Make the network's VXLAN device what it should be (see ``vxlan_commands``) and
    flood to exactly ``peers``. Raises ``CommandFailed`` when a command fails."""
    found = links(namespace)
    host = links("") if namespace else found
    run_all(vxlan_commands(namespace, device, vni, local, bridge, found, host))
    run_all(flood_commands(namespace, device, flood_peers(namespace, device), peers))


def remove_vxlan(namespace: str, device: str, found: dict[str, Link]) -> None:
    """Remove the device (a network that no longer spans hosts)."""
    if device in found:
        run(link_del_argv(namespace, device), COMMAND_TIMEOUT)


def plug_taps(
    namespace: str, taps: Iterable[tuple[str, str]], missing_ok: bool = False
) -> list[str]:
    """Put each ``(tap, network)`` into the network's bridge; answer the taps plugged.

    Raises ``LaminaError`` for a tap that is nowhere unless ``missing_ok`` (libvirt's test
    driver makes no taps), ``CommandFailed`` when ``ip`` fails."""
    wanted = list(taps)
    if not wanted:
        return []
    host = links("") if namespace else {}
    inside = links(namespace)
    plugged = []
    for tap, network in wanted:
        commands = plug_commands(namespace, tap, bridge_name(network), host, inside)
        if commands is None:
            if missing_ok:
                continue
            raise LaminaError(f"tap {tap} of network {network} does not exist", tap=tap)
        run_all(commands)
        if commands:
            log.info("plugged %s into %s", tap, bridge_name(network))
        plugged.append(tap)
    return plugged
