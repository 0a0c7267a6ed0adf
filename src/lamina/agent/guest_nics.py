"""Guests' network interfaces on this host: the hypervisor's NIC specs, and the NICs each
guest was defined with (``<guest dir>/nics.json``), whose taps the agent plugs into their
networks' bridges when the guest starts and when the agent starts."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from lamina.agent.drivers.base import NicSpec
from lamina.errors import InvalidRequest
from lamina.wire.protocol import GuestNic, bridge_name, tap_name

NICS = "nics.json"


def nic_specs(
    nics: list[GuestNic], networks: Collection[str], namespace: str
) -> tuple[NicSpec, ...]:
    """The hypervisor's NICs of a guest. On the host's own network libvirt puts each tap
    into its bridge; in a namespace (which libvirt cannot see) the agent does.

    Raises ``InvalidRequest`` for a network this host does not have or a MAC used twice."""
    macs = [nic.mac for nic in nics]
    if len(set(macs)) != len(macs):
        raise InvalidRequest("two NICs of a guest have the same MAC")
    specs = []
    for nic in nics:
        if nic.network not in networks:
            raise InvalidRequest(f"network {nic.network} is not on this host", network=nic.network)
        bridge = None if namespace else bridge_name(nic.network)
        specs.append(NicSpec(nic.mac, tap_name(nic.mac), bridge))
    return tuple(specs)


def taps(nics: list[GuestNic]) -> list[tuple[str, str]]:
    """``(tap, network)`` of each NIC."""
    return [(tap_name(nic.mac), nic.network) for nic in nics]


def read_nics(guest_dir: Path) -> list[GuestNic]:
    """The NICs the guest was defined with (none if it has no record of them)."""
    try:
        data = json.loads((guest_dir / NICS).read_text())
        return [GuestNic.model_validate(n) for n in data]
    except (OSError, ValueError):
        return []


def write_nics(guest_dir: Path, nics: list[GuestNic]) -> None:
    tmp = guest_dir / f"{NICS}.tmp"
    tmp.write_text(json.dumps([n.model_dump() for n in nics]))
    tmp.rename(guest_dir / NICS)
