"""What networks add to an instance's life (``lamina.compute.lifecycle``): its NICs when it
is recorded, when it is described and when its guest is defined, its host's networks before
the guest exists, its forwards and addresses when it is deleted, a host's networks when
it comes back up, and its networks and forwards when it moves to another host."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.compute.lifecycle import InstanceLifecycle, NicRequest
from lamina.compute.models import Host, Instance
from lamina.errors import LaminaError, NotFound
from lamina.identity.principal import Principal
from lamina.jobs.kinds import JobRegistry, Step, StepContext
from lamina.network.forwards import move_forwards, remove_from_host
from lamina.network.models import Network, Port
from lamina.network.service import connect, default_nics, nics_by_instance, release, service_port
from lamina.network.sync import hosts_of, push, queue_sync, tunnel_address
from lamina.wire.protocol import GuestNic

log = logging.getLogger(__name__)


def attach_nics(
    who: Principal, networks: Sequence[NicRequest] | None, default_network: str
) -> Callable[[Session, Instance], None]:
    """What ``lamina.compute.instances.create_instance`` calls to give a new instance its
    addresses: one on each of ``networks`` (None: on the ``default_network`` if there is one
    ``who`` may use; empty: none)."""

    def attach(session: Session, instance: Instance) -> None:
        nics = networks if networks is not None else default_nics(session, who, default_network)
        connect(session, instance, who, nics)

    return attach


def guest_nics(session: Session, instance: Instance) -> list[GuestNic]:
    ports = session.scalars(select(Port).where(Port.instance_id == instance.id).order_by(Port.nic))
    return [GuestNic(network=p.network_id, mac=p.mac or "") for p in ports]


def connect_networks(ctx: StepContext) -> None:
    """Before the guest is defined its host must have its networks (bridge, DHCP entry);
    the other hosts on those networks learn its name."""
    instance_id = ctx.params["instance_id"]
    with ctx.services.db.write() as s:
        instance = s.get(Instance, instance_id)
        if instance is None:
            raise NotFound(f"instance {instance_id} vanished")
        host = s.get(Host, instance.host_id)
        if host is None:
            raise NotFound(f"host of instance {instance.name} vanished")
        host_id = host.id
        networks = set(s.scalars(select(Port.network_id).where(Port.instance_id == instance.id)))
        if not networks:
            return
        others = hosts_of(s, networks) - {host_id}
        queue_sync(s, ctx.services.jobs, others)
    push(ctx.services, host_id)
    ctx.services.wake_jobs()


def remove_forwards(ctx: StepContext) -> None:
    """Its host stops publishing the instance's ports."""
    remove_from_host(ctx.services, ctx.params["instance_id"], bool(ctx.params.get("force")))


def release_addresses(session: Session, instance: Instance, state: dict[str, Any]) -> None:
    """As the instance is marked deleted: its addresses and forwards are freed; the hosts
    on its networks are to be told (``disconnect_networks``)."""
    networks = set(session.scalars(select(Port.network_id).where(Port.instance_id == instance.id)))
    hosts = hosts_of(session, networks) | release(session, instance.id)
    state["sync_hosts"] = sorted(hosts)


def disconnect_networks(ctx: StepContext) -> None:
    """The instance's host drops its DHCP entry (and a network left without guests); every
    host on its networks drops its name. Queued, so an unreachable host is retried rather
    than holding up the deletion."""
    hosts = ctx.state.get("sync_hosts") or []
    if hosts:
        with ctx.services.db.write() as s:
            queue_sync(s, ctx.services.jobs, hosts)
        ctx.services.wake_jobs()


def resync_host(session: Session, registry: JobRegistry, host_id: str) -> None:
    """An agent back from a restart or an outage gets its networks again (it missed any
    change made meanwhile), and so do the other hosts of those networks (its tunnel
    address may have changed with its settings)."""
    networks = set(session.scalars(select(Port.network_id).where(Port.host_id == host_id)))
    if networks:
        queue_sync(session, registry, hosts_of(session, networks) | {host_id})


# -- an instance moving between hosts (``before_move`` / ``after_move``) -------------------


def _push_or_queue(svc: Any, host_ids: Iterable[str]) -> None:
    """Push each host its state now; one that cannot take it gets a queued sync."""
    missed = []
    for host_id in host_ids:
        try:
            push(svc, host_id)
        except LaminaError as exc:
            log.warning("host %s gets its networks later: %s", host_id, exc.message)
            missed.append(host_id)
    if missed:
        with svc.db.write() as s:
            queue_sync(s, svc.jobs, missed)
        svc.wake_jobs()


def _prune(session: Session, network_ids: Iterable[str], host_id: str, leaving: str) -> None:
    """``host_id`` stops carrying each network where it has no instance but ``leaving``."""
    for network_id in network_ids:
        others = session.scalar(
            select(Port.id)
            .join(Instance, Port.instance_id == Instance.id)
            .where(
                Port.network_id == network_id,
                Instance.host_id == host_id,
                Instance.id != leaving,
            )
            .limit(1)
        )
        if others is None:
            for port in session.scalars(
                select(Port).where(Port.network_id == network_id, Port.host_id == host_id)
            ):
                session.delete(port)


def prepare_move(svc: Any, instance: Instance, source: Host, dest: Host) -> None:
    """Before the switch: ``dest`` carries the instance's networks (with its DHCP entry and
    name, which every host of a network has) and every other host of them floods to it, so
    the guest answers from ``dest`` the moment it runs there. Raises when ``dest`` cannot
    take its networks (the move stops before the switch)."""
    with svc.db.write() as s:
        ids = sorted(set(s.scalars(select(Port.network_id).where(Port.instance_id == instance.id))))
        for network in s.scalars(select(Network).where(Network.id.in_(ids))):
            service_port(s, network, dest.id)
        others = hosts_of(s, ids) - {dest.id}
    if not ids:
        return
    push(svc, dest.id)
    _push_or_queue(svc, sorted(others))


def finish_move(svc: Any, instance: Instance, source: Host, dest: Host) -> None:
    """After the switch: the instance's forwards are published by ``dest`` and withdrawn
    from ``source`` (see ``move_forwards``), ``source`` stops carrying the networks it has
    no other instance on, and every host of them gets its new state (both ends at once)."""
    failed = move_forwards(
        svc, instance.id, source, dest, tunnel_address(source), tunnel_address(dest)
    )
    for forward_id, why in failed.items():
        log.error("forward %s of %s did not move: %s", forward_id, instance.name, why)
    with svc.db.write() as s:
        ids = set(s.scalars(select(Port.network_id).where(Port.instance_id == instance.id)))
        hosts = hosts_of(s, ids) | {source.id, dest.id}
        _prune(s, ids, source.id, instance.id)
    _push_or_queue(svc, [dest.id, source.id])
    others = hosts - {source.id, dest.id}
    if others:
        with svc.db.write() as s:
            queue_sync(s, svc.jobs, others)
        svc.wake_jobs()


def abandon_move(svc: Any, instance: Instance, source: Host, dest: Host) -> None:
    """A move given up before the switch: ``dest`` stops carrying the networks
    ``prepare_move`` gave it for the instance (unless it has other instances on them)."""
    with svc.db.write() as s:
        ids = set(s.scalars(select(Port.network_id).where(Port.instance_id == instance.id)))
        hosts = hosts_of(s, ids)
        _prune(s, ids, dest.id, instance.id)
    _push_or_queue(svc, sorted(hosts))


def register_network_lifecycle(lifecycle: InstanceLifecycle) -> None:
    lifecycle.contribute("instance.create", Step("connect_networks", connect_networks, timeout=120))
    lifecycle.contribute("instance.delete", Step("remove_forwards", remove_forwards, timeout=120))
    lifecycle.contribute("instance.delete", Step("disconnect_networks", disconnect_networks))
    lifecycle.attach_nics = attach_nics
    lifecycle.nic_views = nics_by_instance
    lifecycle.nics = guest_nics
    lifecycle.release.append(release_addresses)
    lifecycle.host_up.append(resync_host)
    lifecycle.before_move.append(prepare_move)
    lifecycle.after_move.append(finish_move)
    lifecycle.move_aborted.append(abandon_move)
