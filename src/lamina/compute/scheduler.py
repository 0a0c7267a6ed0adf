"""Placement: choosing the host of an instance, or checking the one the caller names.

Called inside the write transaction that records the instance (or its move), with the
candidate hosts' rows locked (PostgreSQL) or the database write-locked (SQLite), so two
managers placing at once cannot both take the last room on a host.

Among the hosts that are up, enabled, not excluded and have room, the instances of one
group go first to the host with the fewest of its members (soft anti-affinity, as Nova's
``ServerGroupSoftAntiAffinityWeigher``), then the policy (``compute.scheduler``) decides:
``spread`` the host with the most free memory, then vCPUs; ``pack`` the one with the least
(Nova's RAM weigher with a negative multiplier, OpenNebula's packing policy).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lamina.compute.hosts import ACTIVE, Usage, get_host, usage
from lamina.compute.models import Host, Instance
from lamina.config import ComputeSettings
from lamina.errors import HostFull, InvalidRequest, InvalidState, NoCapacity
from lamina.jobs.models import Job

#: The job that moves an instance, and its parameter naming the destination's id: until it
#: ends, the destination's room counts the instance (two moves to one host at once cannot
#: both take its last room; the job is queued in the transaction that placed it).
MOVE_KIND, MOVE_DEST = "instance.migrate", "dest_id"


@dataclass(frozen=True)
class Room:
    host: Host
    vcpus: float
    memory_mib: float

    def fits(self, vcpus: int, memory_mib: int) -> bool:
        return self.vcpus >= vcpus and self.memory_mib >= memory_mib


#: policy -> sort key among the hosts that fit (smallest first).
POLICIES: dict[str, Callable[[Room], tuple[float, ...]]] = {
    "spread": lambda r: (-r.memory_mib, -r.vcpus),
    "pack": lambda r: (r.memory_mib, r.vcpus),
}


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


def unavailable(host: Host) -> str | None:
    """Why the scheduler may not place anything on ``host`` (None: it may)."""
    why = {
        "pending": "pending (its agent has not enrolled)",
        "down": "down (its agent does not answer)",
    }.get(host.status, None if host.status == "up" else host.status)
    if host.disabled:
        off = "disabled" + (f" ({host.disabled_reason})" if host.disabled_reason else "")
        why = f"{why} and {off}" if why else off
    return why


def place(
    session: Session,
    cfg: ComputeSettings,
    vcpus: int,
    memory_mib: int,
    host_ref: str | None,
    *,
    group: str | None = None,
    owner: str | None = None,
    exclude: Collection[str] = (),
) -> Host:
    """The host for an instance of ``vcpus`` and ``memory_mib``: the one named by
    ``host_ref`` (id or name) if it can take it, else the scheduler's choice among the hosts
    that are up and enabled. ``group``: the instance's group, whose members (``owner``'s
    only, when given) are spread over the hosts; ``exclude``: ids of hosts never chosen
    (migration excludes the instance's own host).

    Raises, naming the host and why: ``NotFound`` (404) for an unknown named host,
    ``InvalidRequest`` (400) for a named host in ``exclude``, ``InvalidState`` (409) for one
    that is pending, down or disabled, ``HostFull`` (409) for one without room (with what it
    has free); ``NoCapacity`` (503) when no host could be chosen (none up and enabled, or
    none with room: the message names the roomiest and what it has free)."""
    if host_ref:
        host = get_host(session, host_ref)
        session.flush()  # a refresh would drop what the transaction changed and not flushed
        session.refresh(host, with_for_update=True)
        return _check_named(session, cfg, host, vcpus, memory_mib, exclude)
    query = select(Host).where(Host.status == "up", Host.disabled_at.is_(None))
    if exclude:
        query = query.where(Host.id.not_in(list(exclude)))
    hosts = list(session.scalars(query.order_by(Host.name).with_for_update()))
    if not hosts:
        raise NoCapacity(_nobody(session, exclude))
    used = committed(session)
    rooms = [capacity(h, used.get(h.id), cfg) for h in hosts]
    fitting = [r for r in rooms if r.fits(vcpus, memory_mib)]
    if not fitting:
        best = max(rooms, key=lambda r: (r.memory_mib, r.vcpus))
        raise NoCapacity(
            f"no host has room for {vcpus} vCPU(s) and {memory_mib} MiB; the roomiest, "
            f"{best.host.name!r}, has {max(best.vcpus, 0):g} vCPU(s) and "
            f"{max(best.memory_mib, 0):g} MiB free",
            vcpus=vcpus,
            memory_mib=memory_mib,
        )
    members = group_members(session, group, owner) if group else {}
    policy = POLICIES[cfg.scheduler]
    return min(fitting, key=lambda r: (members.get(r.host.id, 0), *policy(r), r.host.name)).host


def check_destination(
    session: Session, cfg: ComputeSettings, instance: Instance, host_ref: str | None
) -> Host:
    """Where ``instance`` may move: the host named by ``host_ref``, checked, or (None) the
    scheduler's choice among the other hosts, its group spread as at creation. The host's
    row is locked until the transaction ends.

    Raises as ``place`` does (unknown 404; pending, down or disabled 409 ``InvalidState``;
    full 409 ``HostFull``; no other host 503 ``NoCapacity``), and ``InvalidRequest`` (400)
    when the named host is the one the instance is on."""
    exclude = (instance.host_id,) if instance.host_id else ()
    if host_ref:
        host = get_host(session, host_ref)
        if host.id == instance.host_id:
            raise InvalidRequest(
                f"instance {instance.name!r} is already on host {host.name!r}: name another "
                "host, or none to let the scheduler choose",
                host=host.name,
                instance=instance.name,
            )
        host_ref = host.id
    return place(
        session,
        cfg,
        instance.vcpus,
        instance.memory_mib,
        host_ref,
        group=instance.group_name,
        owner=instance.owner,
        exclude=exclude,
    )


def committed(session: Session) -> dict[str, Usage]:
    """What each host's instances take (``hosts.usage``) and what the moves under way to it
    will (an instance still on its source counts on both until its move ends)."""
    used = usage(session)
    moves = session.execute(
        select(Job.params, Instance.host_id, Instance.vcpus, Instance.memory_mib)
        .join(Instance, Instance.id == Job.target_id)
        .where(Job.kind == MOVE_KIND, Job.status.in_(("queued", "running")))
    )
    for params, host_id, vcpus, memory_mib in moves:
        dest = (params or {}).get(MOVE_DEST)
        if not dest or dest == host_id:  # switched already: usage counts it there
            continue
        was = used.get(dest, Usage(0, 0, 0))
        used[dest] = Usage(was.vcpus + vcpus, was.memory_mib + memory_mib, was.instances + 1)
    return used


def group_members(session: Session, group: str, owner: str | None = None) -> dict[str, int]:
    """Host id -> how many instances of ``group`` (``owner``'s, when given) it holds."""
    query = (
        select(Instance.host_id, func.count())
        .where(
            Instance.group_name == group,
            Instance.host_id.is_not(None),
            Instance.status.in_(ACTIVE),
        )
        .group_by(Instance.host_id)
    )
    if owner is not None:
        query = query.where(Instance.owner == owner)
    return {str(host_id): int(n) for host_id, n in session.execute(query)}


def _check_named(
    session: Session,
    cfg: ComputeSettings,
    host: Host,
    vcpus: int,
    memory_mib: int,
    exclude: Collection[str],
) -> Host:
    if host.id in exclude:
        raise InvalidRequest(f"host {host.name!r} cannot be chosen here", host=host.name)
    why = unavailable(host)
    if why:
        raise InvalidState(
            f"host {host.name!r} is {why}: it takes no new instances",
            host=host.name,
            status=host.status,
            disabled=host.disabled,
        )
    room = capacity(host, committed(session).get(host.id), cfg)
    if not room.fits(vcpus, memory_mib):
        free_vcpus, free_memory = max(room.vcpus, 0), max(room.memory_mib, 0)
        raise HostFull(
            f"host {host.name!r} has no room for {vcpus} vCPU(s) and {memory_mib} MiB: it has "
            f"{free_vcpus:g} vCPU(s) and {free_memory:g} MiB free",
            host=host.name,
            vcpus=vcpus,
            memory_mib=memory_mib,
            vcpus_free=free_vcpus,
            memory_free_mib=free_memory,
        )
    return host


def _nobody(session: Session, exclude: Collection[str]) -> str:
    """Why no host could be a candidate: none up, or the up ones disabled or excluded."""
    up = list(session.scalars(select(Host).where(Host.status == "up")))
    disabled = sorted(h.name for h in up if h.disabled and h.id not in exclude)
    message = f"no {'other ' if exclude else ''}host is up to run the instance"
    if disabled:
        names = ", ".join(repr(n) for n in disabled)
        message += f": {names} {'is' if len(disabled) == 1 else 'are'} disabled"
    return message
