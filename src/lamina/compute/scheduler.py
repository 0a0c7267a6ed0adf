"""Placement: the host with the most free capacity that fits, or the one the user names.

Called inside the write transaction that records the instance, with the candidate hosts'
rows locked (PostgreSQL) or the database write-locked (SQLite), so two managers placing at
once cannot both take the last room on a host.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.compute.hosts import Usage, get_host, usage
from lamina.compute.models import Host
from lamina.config import ComputeSettings
from lamina.errors import NoCapacity


@dataclass(frozen=True)
class Room:
    host: Host
    vcpus: float
    memory_mib: float


def capacity(host: Host, used: Usage | None, cfg: ComputeSettings) -> Room:
    """What is still free on a host after its reserve and its instances."""
    used = used or Usage(0, 0, 0)
    return Room(
        host,
        vcpus=host.vcpus * cfg.cpu_allocation_ratio - used.vcpus,
        memory_mib=host.memory_mib * cfg.memory_allocation_ratio
        - host.reserved_memory_mib
        - used.memory_mib,
    )


def place(
    session: Session,
    cfg: ComputeSettings,
    vcpus: int,
    memory_mib: int,
    host_ref: str | None,
    *,
    exclude: Collection[str] = (),
) -> Host:
    """The host for an instance: ``host_ref`` if it is up and has room, else the roomiest
    that is up (never one of the ``exclude`` host ids). ``NotFound`` for an unknown host,
    ``NoCapacity`` when none can take it."""
    if host_ref:
        hosts = [get_host(session, host_ref)]
        session.refresh(hosts[0], with_for_update=True)
    else:
        query = select(Host).where(Host.status == "up")
        if exclude:
            query = query.where(Host.id.not_in(list(exclude)))
        hosts = list(session.scalars(query.with_for_update()))
    if not hosts:
        other = " other" if exclude else ""
        raise NoCapacity(f"no{other} host is up to run the instance")
    used = usage(session)
    rooms = [capacity(h, used.get(h.id), cfg) for h in hosts]
    if host_ref and hosts[0].status != "up":
        raise NoCapacity(f"host {hosts[0].name!r} is {hosts[0].status}", host=hosts[0].name)
    fitting = [r for r in rooms if r.vcpus >= vcpus and r.memory_mib >= memory_mib]
    if not fitting:
        best = max(rooms, key=lambda r: (r.memory_mib, r.vcpus))
        raise NoCapacity(
            f"no host has room for {vcpus} vCPU(s) and {memory_mib} MiB; the roomiest, "
            f"{best.host.name!r}, has {max(best.vcpus, 0):g} vCPU(s) and "
            f"{max(best.memory_mib, 0):g} MiB free",
            vcpus=vcpus,
            memory_mib=memory_mib,
        )
    return max(fitting, key=lambda r: (r.memory_mib, r.vcpus)).host
