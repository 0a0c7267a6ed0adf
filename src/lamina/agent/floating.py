"""Floating addresses: a forward may bind an address of the data-centre network that is
not the host's own. The agent adds it to the interface on that network (as a /32, so no
route changes) while a forward uses it, announces it with gratuitous ARP (so the network's
switches and neighbours send to this host at once, also when it moved here from another
host), and removes it with the last forward that uses it.

Builders and the ARP frame are pure (tested by equality); ``announce`` sends the frames on
a raw socket in the host's own network, where the forwards listen.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time

from lamina.agent.bridges import BRIDGE_PREFIX, TAP_PREFIX, VXLAN_PREFIX, Link
from lamina.agent.netns import ip_argv

log = logging.getLogger(__name__)

#: Gratuitous ARPs sent for a new floating address, ``ANNOUNCE_INTERVAL`` seconds apart
#: (more than one: the host it moved from may answer for it a moment longer).
ANNOUNCE_COUNT = 3
ANNOUNCE_INTERVAL = 1.0
_ETH_P_ARP = 0x0806
_LAMINA_PREFIXES = (BRIDGE_PREFIX, TAP_PREFIX, VXLAN_PREFIX)


def is_fixed(bind: str) -> bool:
    """Loopback and wildcard addresses are every host's own: never floating."""
    address = ipaddress.ip_address(bind)
    return address.is_loopback or address.is_unspecified


def has_address(bind: str, found: dict[str, Link]) -> bool:
    """Whether an interface has ``bind`` already."""
    return any(a.split("/")[0] == bind for link in found.values() for a in link.addresses)


def floating_interface(bind: str, found: dict[str, Link]) -> str | None:
    """The interface on whose network ``bind`` lies (an IPv4 address of it has ``bind`` in
    its prefix; Lamina's own bridges, taps and tunnels and loopback never), or None."""
    try:
        address = ipaddress.IPv4Address(bind)
    except ValueError:
        return None
    for name in sorted(found):
        link = found[name]
        if name == "lo" or name.startswith(_LAMINA_PREFIXES):
            continue
        for cidr in link.addresses:
            if address in ipaddress.IPv4Interface(cidr).network:
                return name
    return None


def add_argv(interface: str, bind: str) -> list[str]:
    return ip_argv("", "addr", "add", f"{bind}/32", "dev", interface)


def del_argv(interface: str, bind: str) -> list[str]:
    return ip_argv("", "addr", "del", f"{bind}/32", "dev", interface)


def garp_frames(mac: str, ip: str) -> list[bytes]:
    """Two gratuitous ARPs for ``ip`` at ``mac``, broadcast: a request and a reply whose
    sender and target are both ``ip`` (neighbours update an entry they have from either)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = ipaddress.IPv4Address(ip).packed
    broadcast = b"\xff" * 6
    frames = []
    for op, target_hw in ((1, b"\x00" * 6), (2, broadcast)):
        arp = (
            (1).to_bytes(2, "big")  # Ethernet
            + (0x0800).to_bytes(2, "big")  # IPv4
            + bytes([6, 4])
            + op.to_bytes(2, "big")
            + hw
            + addr
            + target_hw
            + addr
        )
        frames.append(broadcast + hw + _ETH_P_ARP.to_bytes(2, "big") + arp)
    return frames


def send_garp(interface: str, mac: str, ip: str) -> None:
    """One round of gratuitous ARP on ``interface``; raises ``OSError``."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ARP)) as sock:
        sock.bind((interface, 0))
        for frame in garp_frames(mac, ip):
            sock.send(frame)


def announce(interface: str, mac: str, ip: str) -> None:
    """Send ``ANNOUNCE_COUNT`` rounds of gratuitous ARP in the background."""

    def run() -> None:
        for round_ in range(ANNOUNCE_COUNT):
            if round_:
                time.sleep(ANNOUNCE_INTERVAL)
            try:
                send_garp(interface, mac, ip)
            except OSError as exc:
                log.warning("gratuitous ARP for %s on %s: %s", ip, interface, exc)
                return

    with contextlib.suppress(RuntimeError):
        threading.Thread(target=run, name=f"garp-{ip}", daemon=True).start()
