"""A host's share of the networks, pushed to its agent whole (``PUT /network``): the
networks it carries (it has instances on them, or one is moving there), each with the DHCP
entries of every instance on the network and the network's whole zone (the same on every
host of the network: any host can answer any of its guests, one that just moved too), its
VXLAN id, this host's tunnel address and the other carriers' (the peers its VXLAN device
floods to). Pushing is idempotent, so any change that concerns a host simply pushes again:
in the job step that needs it at once (an instance's network before its guest is defined),
or as a queued ``network.sync`` job for the other hosts (coalesced: one queued per host)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.compute.lifecycle import Provides, lifecycle_of
from lamina.compute.models import Host, Instance
from lamina.errors import BackendUnavailable
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.jobs.models import Job
from lamina.jobs.service import submit
from lamina.network.dns import NAMED, zone, zone_records
from lamina.network.models import DnsRecord, Network, Port
from lamina.wire.protocol import DhcpHost, NetworkSpec, NetworkState

if TYPE_CHECKING:
    from lamina.config import Settings
    from lamina.services import Services

log = logging.getLogger(__name__)
SYNC = "network.sync"


def tunnel_address(host: Host) -> str | None:
    """The host's underlay address for VXLAN: its agent's ``tunnel_address`` setting, else
    the host part of the address the manager reaches it at (a name is resolved). None for
    a loopback address (hosts on one machine sharing one network: no tunnel can join them)
    or a name that does not resolve."""
    text = host.tunnel_address or host.address.rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        try:
            address = ipaddress.ip_address(socket.gethostbyname(text))
        except (OSError, UnicodeError, ValueError):
            log.warning("host %s: no tunnel address (%r does not resolve)", host.name, text)
            return None
    if not isinstance(address, ipaddress.IPv4Address) or address.is_loopback:
        return None
    return str(address)


def carriers(session: Session, network_id: str) -> list[Host]:
    """The hosts that carry the network (hold a service row on it), by name."""
    return list(
        session.scalars(
            select(Host)
            .join(Port, Port.host_id == Host.id)
            .where(Port.network_id == network_id)
            .order_by(Host.name)
        )
    )


def peers_of(session: Session, network_id: str, host: Host) -> tuple[str | None, list[str]]:
    """(the host's tunnel address, the other carriers' ones) on the network."""
    local = tunnel_address(host)
    others = {tunnel_address(h) for h in carriers(session, network_id) if h.id != host.id}
    return local, sorted(a for a in others if a is not None and a != local)


def host_state(
    session: Session, host_id: str, settings: Settings, *, provides: Provides | None
) -> NetworkState:
    """What the host should have: every active network it holds a service address on
    (``provides``: as for ``lamina.network.dns.zone_records``)."""
    domain = settings.network.domain
    host = session.get(Host, host_id)
    rows = session.execute(
        select(Network, Port)
        .join(Port, Port.network_id == Network.id)
        .where(Port.host_id == host_id, Network.status == "active")
        .order_by(Network.name)
    ).all()
    specs = []
    for network, service in rows:
        guests = session.execute(
            select(Port, Instance)
            .join(Instance, Port.instance_id == Instance.id)
            .where(Port.network_id == network.id, Instance.status.in_(NAMED))
            .order_by(Port.ip)
        ).all()
        local, peers = peers_of(session, network.id, host) if host else (None, [])
        specs.append(
            NetworkSpec(
                network=network.id,
                name=network.name,
                cidr=network.cidr,
                address=service.ip,
                mode=network.mode,
                domain=zone(network, domain),
                vlan=network.vlan,
                hosts=[
                    DhcpHost(
                        mac=port.mac or "",
                        ip=port.ip,
                        hostname=port.hostname or instance.name,
                        primary=port.nic == 0,
                    )  # fmt: skip
                    for port, instance in guests
                ],
                records=zone_records(session, network, domain, provides=provides),
                upstream_dns=list(settings.network.upstream_dns),
                config_service_url=settings.manager.url,
                vni=network.vni,
                local=local,
                peers=peers if local is not None else [],
                mtu=settings.network.guest_mtu or None,
            )
        )
    return NetworkState(networks=specs)


def push(svc: Services, host_id: str) -> None:
    """Send the host its network state now; raises what the agent raises."""
    with svc.db.read() as s:
        host = s.get(Host, host_id)
        if host is None:
            return
        state = host_state(s, host_id, svc.settings, provides=lifecycle_of(svc).provides)
    svc.agents.for_host(host).network_state(state)


def hosts_of(session: Session, network_ids: Iterable[str]) -> set[str]:
    """Hosts that hold a service address on any of these networks."""
    ids = list(network_ids)
    if not ids:
        return set()
    return set(
        session.scalars(
            select(Port.host_id).where(Port.network_id.in_(ids), Port.host_id.is_not(None))
        )
    )


def queue_sync(session: Session, registry: JobRegistry, host_ids: Iterable[str]) -> list[Job]:
    """A ``network.sync`` job for each host that has none queued yet."""
    jobs = []
    for host_id in sorted(set(host_ids)):
        queued = session.scalar(
            select(Job.id).where(Job.kind == SYNC, Job.target_id == host_id, Job.status == "queued")
        )
        if queued is None:
            jobs.append(
                submit(session, registry.get(SYNC), {"host_id": host_id},
                       target_type="host", target_id=host_id)
            )  # fmt: skip
    return jobs


def _sync_step(ctx: StepContext) -> None:
    push(ctx.services, ctx.params["host_id"])


def _withdraw(ctx: StepContext) -> None:
    """A deleted network leaves every host still holding it; a host that cannot be reached
    loses it at its next sync (a host coming up is always synced)."""
    network_id = ctx.params["network_id"]
    with ctx.services.db.write() as s:
        hosts = hosts_of(s, [network_id])
        for port in s.scalars(select(Port).where(Port.network_id == network_id)):
            s.delete(port)
    for host_id in sorted(hosts):
        try:
            push(ctx.services, host_id)
        except BackendUnavailable as exc:
            log.warning("network %s stays on unreachable host %s for now: %s",
                        network_id, host_id, exc.message)  # fmt: skip


def forget_network(session: Session, network_id: str) -> None:
    """Remove a network's rows (its hosts have withdrawn it)."""
    for model in (DnsRecord, Port):
        for row in session.scalars(select(model).where(model.network_id == network_id)):
            session.delete(row)
    network = session.get(Network, network_id)
    if network is not None:
        session.flush()
        session.delete(network)


def _forget(ctx: StepContext) -> None:
    with ctx.services.db.write() as s:
        forget_network(s, ctx.params["network_id"])


def _keep_network(ctx: StepContext, error: str) -> None:
    with ctx.services.db.write() as s:
        network = s.get(Network, ctx.params["network_id"])
        if network is not None:
            network.status = "active"


def register_network_jobs(registry: JobRegistry) -> None:
    registry.register(JobKind(SYNC, (Step("push", _sync_step, timeout=120),), deadline=900))
    registry.register(
        JobKind(
            "network.delete",
            (Step("withdraw", _withdraw, timeout=300), Step("forget", _forget)),
            deadline=600,
            on_failure=_keep_network,
        )
    )
