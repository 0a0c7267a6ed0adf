"""A host's share of the networks, pushed to its agent whole (``PUT /network``): the
networks it has instances on, each with its guests' DHCP entries and the network's whole
zone. Pushing is idempotent, so any change that concerns a host simply pushes again: in
the job step that needs it at once (an instance's network before its guest is defined), or
as a queued ``network.sync`` job for the other hosts (coalesced: one queued per host)."""

from __future__ import annotations

import logging
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


def host_state(
    session: Session, host_id: str, settings: Settings, *, provides: Provides | None
) -> NetworkState:
    """What the host should have: every active network it holds a service address on
    (``provides``: as for ``lamina.network.dns.zone_records``)."""
    domain = settings.network.domain
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
            .where(
                Port.network_id == network.id,
                Instance.host_id == host_id,
                Instance.status.in_(NAMED),
            )
            .order_by(Port.ip)
        ).all()
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
