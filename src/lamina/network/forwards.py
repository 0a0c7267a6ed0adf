"""Port forwards: a guest's TCP port published on its host (``lamina instance expose``), like
LXD's proxy devices or ``docker -p``; bound to 127.0.0.1 unless asked otherwise. The row is
recorded first (its unique keys refuse a host port or guest port published twice, even by
concurrent requests), then a job has the host listen; if the host cannot (the port is in
use), the row goes and the job says why."""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lamina.compute.models import Host, Instance
from lamina.errors import (
    BackendUnavailable,
    Conflict,
    Forbidden,
    InvalidRequest,
    InvalidState,
    LaminaError,
    NotFound,
)
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.jobs.models import Job
from lamina.jobs.service import submit
from lamina.network.models import Network, Port, PortForward
from lamina.network.sync import tunnel_address
from lamina.wire.protocol import PortForward as ForwardSpec

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)


def expose(
    session: Session,
    registry: JobRegistry,
    instance: Instance,
    *,
    guest_port: int,
    host_port: int | None = None,
    bind: str = "127.0.0.1",
    network: str | None = None,
    requester: str | None = None,
    may_float: bool = False,
) -> tuple[PortForward, Job]:
    """Record a forward of ``guest_port`` of the instance's address on ``network`` (name or
    id; default its primary network) to ``bind:host_port`` on its host (``host_port``
    None: the host picks a free one), and queue the job that makes the host listen.
    ``may_float``: whether ``bind`` may be a floating address (administrators only: the
    host takes that address on the data-centre network)."""
    if not 1 <= guest_port <= 65535 or (host_port is not None and not 1 <= host_port <= 65535):
        raise InvalidRequest("ports are 1 to 65535")
    try:
        address = str(ipaddress.ip_address(bind.strip()))
    except ValueError:
        raise InvalidRequest(f"bind {bind!r} is not an IP address of the host") from None
    if instance.host_id is None:
        raise InvalidState(f"instance {instance.name!r} has no host yet")
    _bind_free(session, instance, address, may_float)
    port = _nic(session, instance, network)
    clash = session.scalar(
        select(PortForward).where(
            PortForward.instance_id == instance.id, PortForward.guest_port == guest_port
        )
    )
    if clash is not None:
        raise Conflict(
            f"port {guest_port} of {instance.name!r} is already published on "
            f"{clash.bind}:{clash.host_port or '(choosing)'}",
            forward=clash.id,
        )
    if host_port is not None:
        _host_port_free(session, instance, host_port)
    forward = PortForward(
        instance_id=instance.id,
        host_id=instance.host_id,
        network_id=port.network_id,
        guest_ip=port.ip,
        guest_port=guest_port,
        bind=address,
        host_port=host_port,
    )
    try:
        with session.begin_nested():
            session.add(forward)
            session.flush()
    except IntegrityError:
        raise Conflict(f"host port {host_port} was just published by another request") from None
    job = submit(
        session,
        registry.get("forward.create"),
        {"forward_id": forward.id},
        target_type="instance",
        target_id=instance.id,
        owner=requester or instance.owner,
    )
    return forward, job


def _bind_free(session: Session, instance: Instance, bind: str, may_float: bool) -> None:
    """A bind address that is a host's own may be used by that host's instances only; one
    that is no host's (a floating address, which the agent adds and which follows the
    instance from host to host) by one instance only. Loopback and wildcard: by anyone."""
    address = ipaddress.ip_address(bind)
    if address.is_loopback or address.is_unspecified:
        return
    for host in session.scalars(select(Host)):
        if bind in (tunnel_address(host), host.address.rpartition(":")[0].strip("[]")):
            if host.id != instance.host_id:
                raise InvalidRequest(
                    f"{bind} is host {host.name}'s own address; {instance.name!r} runs on "
                    "another host (bind a floating address to have a forward follow it)"
                )
            return
    if not may_float:
        # The host would add it to its interface and announce it: a member could take over
        # any address of the data-centre network (the manager's, a router's).
        raise Forbidden(
            f"{bind} is no host's own address: only administrators may bind a floating "
            "address; bind 127.0.0.1, 0.0.0.0 or the host's address"
        )
    holder = session.scalar(
        select(Instance)
        .join(PortForward, PortForward.instance_id == Instance.id)
        .where(PortForward.bind == bind, Instance.id != instance.id)
        .limit(1)
    )
    if holder is not None:
        name = holder.name if holder.owner == instance.owner else "another instance"
        raise Conflict(
            f"the floating address {bind} is {name}'s: it follows one instance's forwards",
            bind=bind,
        )


def _nic(session: Session, instance: Instance, network: str | None) -> Port:
    query = (
        select(Port)
        .join(Network, Port.network_id == Network.id)
        .where(Port.instance_id == instance.id)
        .order_by(Port.nic)
    )
    if network is not None:
        query = query.where((Network.name == network) | (Network.id == network))
    port = session.scalars(query).first()
    if port is None:
        where = f"on network {network!r}" if network else "on any network"
        raise InvalidState(f"instance {instance.name!r} has no address {where} to forward to")
    return port


def _host_port_free(session: Session, instance: Instance, host_port: int) -> None:
    holder = session.scalar(
        select(PortForward).where(
            PortForward.host_id == instance.host_id, PortForward.host_port == host_port
        )
    )
    if holder is not None:
        other = session.get(Instance, holder.instance_id)
        if other is None or other.owner != instance.owner:
            # Another user's forward: not theirs to know of (its id, its instance).
            raise Conflict(f"port {host_port} of the host is not available; choose another")
        raise Conflict(
            f"port {host_port} of the host is already published (forward {holder.id})",
            forward=holder.id,
        )


def find_forward(session: Session, instance: Instance, ref: str) -> PortForward:
    """One of the instance's forwards by id or by guest port."""
    query = select(PortForward).where(PortForward.instance_id == instance.id)
    query = query.where(
        PortForward.guest_port == int(ref) if ref.isdigit() else PortForward.id == ref
    )
    forward = session.scalar(query)
    if forward is None:
        raise NotFound(f"instance {instance.name!r} publishes no port {ref}", forward=ref)
    return forward


def unexpose(
    session: Session, registry: JobRegistry, forward: PortForward, requester: str | None
) -> Job:
    if forward.status not in ("active", "error"):
        raise InvalidState(f"forward {forward.id} is {forward.status}")
    forward.status = "removing"
    return submit(
        session,
        registry.get("forward.delete"),
        {"forward_id": forward.id},
        target_type="instance",
        target_id=forward.instance_id,
        owner=requester,
    )


def list_forwards(session: Session, instance_id: str) -> list[PortForward]:
    return list(
        session.scalars(
            select(PortForward)
            .where(PortForward.instance_id == instance_id)
            .order_by(PortForward.guest_port)
        )
    )


def describe_forward(forward: PortForward) -> dict[str, Any]:
    bind = f"[{forward.bind}]" if ":" in forward.bind else forward.bind
    return {
        "id": forward.id,
        "instance_id": forward.instance_id,
        "protocol": forward.protocol,
        "guest": f"{forward.guest_ip}:{forward.guest_port}",
        "guest_port": forward.guest_port,
        "bind": forward.bind,
        "host_port": forward.host_port,
        "address": f"{bind}:{forward.host_port}" if forward.host_port else None,
        "status": forward.status,
        "error": forward.error,
    }


def remove_from_host(svc: Services, instance_id: str, force: bool) -> None:
    """Withdraw every forward of an instance from its host (before the instance goes);
    with ``force`` an unreachable host is left to reconcile."""
    with svc.db.read() as s:
        pairs = [(f.id, s.get(Host, f.host_id)) for f in list_forwards(s, instance_id)]
    for forward_id, host in pairs:
        if host is None:
            continue
        try:
            svc.agents.for_host(host).forward_delete(forward_id)
        except BackendUnavailable:
            if not force:
                raise
            log.warning("forward %s stays on unreachable host %s", forward_id, host.name)


def _spec(forward: PortForward) -> ForwardSpec:
    return ForwardSpec(
        bind=forward.bind,
        host_port=forward.host_port or 0,
        network=forward.network_id,
        guest_ip=forward.guest_ip,
        guest_port=forward.guest_port,
    )


def move_forwards(
    svc: Services, instance_id: str, source: Host, dest: Host, source_address: str | None,
    dest_address: str | None,
) -> dict[str, str]:  # fmt: skip
    """After an instance moved from ``source`` to ``dest``: each forward ``source``
    published for it is published by ``dest`` on the same port, then withdrawn from
    ``source``. The bind address stays (a floating address moves with the forward: the
    destination takes it over, see docs/networks.md) unless it was ``source``'s own
    (``source_address``): then it is ``dest``'s (``dest_address``). Idempotent (a manager
    restarted halfway calls it again: what moved is published and withdrawn again, no-ops
    for the agents). Answers the forwards that could not move, with why (their rows say
    ``error``); never raises for one."""
    failed: dict[str, str] = {}
    with svc.db.write() as s:
        for row in list(
            s.scalars(
                select(PortForward).where(
                    PortForward.instance_id == instance_id, PortForward.host_id == source.id
                )
            )
        ):
            bind = row.bind
            if source_address is not None and bind == source_address and dest_address:
                bind = dest_address
            try:
                with s.begin_nested():
                    row.host_id, row.bind = dest.id, bind
                    s.flush()
            except IntegrityError:
                row.status = "error"
                row.error = f"host port {row.host_port} is taken on host {dest.name}"
                failed[row.id] = row.error
        everything = list_forwards(s, instance_id)
        moved = [(f.id, _spec(f)) for f in everything if f.host_id == dest.id]
        all_ids = [f.id for f in everything]
    target = svc.agents.for_host(dest)
    for forward_id, spec in moved:
        try:
            info = target.forward_create(forward_id, spec)
        except LaminaError as exc:
            failed[forward_id] = f"host {dest.name}: {exc.message}"
            info = None
        with svc.db.write() as s:
            stored = s.get(PortForward, forward_id)
            if stored is not None and info is not None:
                stored.host_port, stored.status, stored.error = info.host_port, "active", None
            elif stored is not None:
                stored.status, stored.error = "error", failed[forward_id]
    # Every forward leaves the source, moved or not: the instance is not there any more.
    withdrawn = svc.agents.for_host(source)
    for forward_id in all_ids:
        try:
            withdrawn.forward_delete(forward_id)
        except LaminaError as exc:
            log.warning("forward %s stays on host %s for now: %s", forward_id, source.name,
                        exc.message)  # fmt: skip
    return failed


# -- jobs ---------------------------------------------------------------------------------


def _load(ctx: StepContext) -> tuple[PortForward, Host]:
    with ctx.services.db.read() as s:
        forward = s.get(PortForward, ctx.params["forward_id"])
        if forward is None:
            raise NotFound(f"forward {ctx.params['forward_id']} vanished")
        host = s.get(Host, forward.host_id)
        if host is None:
            raise NotFound(f"the host of forward {forward.id} vanished")
        s.expunge(forward)
    return forward, host


def _listen(ctx: StepContext) -> None:
    forward, host = _load(ctx)
    spec = _spec(forward)
    info = ctx.services.agents.for_host(host).forward_create(forward.id, spec)
    with ctx.services.db.write() as s:
        row = s.get(PortForward, forward.id)
        if row is not None:
            row.host_port, row.status, row.error = info.host_port, "active", None


def _unlisten(ctx: StepContext) -> None:
    forward, host = _load(ctx)
    ctx.services.agents.for_host(host).forward_delete(forward.id)


def _forget(ctx: StepContext) -> None:
    with ctx.services.db.write() as s:
        row = s.get(PortForward, ctx.params["forward_id"])
        if row is not None:
            s.delete(row)


def _drop_failed(ctx: StepContext, error: str) -> None:
    """A forward the host could not open is not kept: the job's error says why."""
    _forget(ctx)


def _keep_failed(ctx: StepContext, error: str) -> None:
    with ctx.services.db.write() as s:
        row = s.get(PortForward, ctx.params["forward_id"])
        if row is not None:
            row.status, row.error = "error", error


def register_forward_jobs(registry: JobRegistry) -> None:
    registry.register(
        JobKind(
            "forward.create",
            (Step("listen", _listen, _unlisten, timeout=60),),
            deadline=300,
            on_failure=_drop_failed,
        )
    )
    registry.register(
        JobKind(
            "forward.delete",
            (Step("unlisten", _unlisten, timeout=60), Step("forget", _forget)),
            deadline=300,
            on_failure=_keep_failed,
        )
    )
