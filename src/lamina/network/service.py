"""Networks: create, find, describe, delete; instances' NICs on them (addresses allocated by
Lamina, a service address per host) and their release.

The use cases (``create_network(svc, who, ...)`` ...) are what a front end calls; the
functions after them work inside a transaction the caller holds."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lamina.compute.lifecycle import NicRequest, lifecycle_of
from lamina.compute.models import Host, Instance
from lamina.errors import Conflict, Forbidden, InvalidRequest, InvalidState, NotFound
from lamina.identity.access import Need, check, may_see, shown_owner, visible_to
from lamina.identity.principal import Principal
from lamina.jobs.kinds import JobRegistry
from lamina.jobs.models import Job
from lamina.jobs.service import submit
from lamina.network import dns
from lamina.network.addresses import (
    check_requested,
    first_free,
    gateway,
    new_mac,
    overlapping,
    parse_cidr,
)
from lamina.network.dns import zone
from lamina.network.models import NETWORK_MODES, DnsRecord, Network, Port, PortForward
from lamina.network.sync import hosts_of, queue_sync
from lamina.wire.protocol import VNI_MAX

if TYPE_CHECKING:
    from lamina.services import Services

KIND = "network"
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
VISIBILITIES = ("private", "public")
#: Tries to allocate an address when another request took the one chosen meanwhile.
ALLOCATION_TRIES = 8


# -- use cases ----------------------------------------------------------------------------
# What the API (and any other front end) calls: each takes the container and the caller, runs
# its own transaction, checks who may do it and returns the network as the API shows it.


def create_network(
    svc: Services,
    who: Principal,
    *,
    name: str,
    cidr: str,
    mode: str = "nat",
    visibility: str = "private",
    vlan: int | None = None,
    description: str = "",
) -> dict[str, Any]:
    """A network owned by ``who`` (see ``_create_network`` for what is refused)."""
    with svc.db.write() as s:
        network = _create_network(
            s, who, name=name, cidr=cidr, mode=mode, visibility=visibility, vlan=vlan,
            description=description,
        )  # fmt: skip
        return describe_network(s, network, svc.settings.network.domain)


def list_networks(svc: Services, who: Principal) -> list[dict[str, Any]]:
    """The networks ``who`` may see (their own and public ones; all, for admins), by name."""
    domain = svc.settings.network.domain
    with svc.db.read() as s:
        return [describe_network(s, n, domain, who) for n in _list_networks(s, who)]


def show_network(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    """One network by id or name, with the addresses in use on it."""
    with svc.db.read() as s:
        network = get_network(s, ref, who)
        shown = describe_network(s, network, svc.settings.network.domain, who)
        shown["addresses"] = _addresses(s, network, who)
        return shown


def update_network(
    svc: Services,
    who: Principal,
    ref: str,
    *,
    visibility: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Make a network public (every user may attach instances) or private, or describe it
    anew; owners only."""
    if visibility is not None and visibility not in VISIBILITIES:
        raise InvalidRequest(f"visibility must be one of {', '.join(VISIBILITIES)}")
    with svc.db.write() as s:
        network = get_network(s, ref, who, "own")
        if visibility is not None:
            network.visibility = visibility
        if description is not None:
            network.description = description
        return describe_network(s, network, svc.settings.network.domain)


def delete_network(svc: Services, who: Principal, ref: str) -> Job:
    """Queue the deletion of a network of ``who``'s that no instance uses."""
    with svc.db.write() as s:
        network = get_network(s, ref, who, "own")
        job = _delete_network(s, svc.jobs, network, who)
    svc.wake_jobs()
    return job


def list_records(svc: Services, who: Principal, ref: str) -> tuple[str, list[dict[str, Any]]]:
    """The network's zone and every record of it: those Lamina keeps for its instances
    (``source`` instance, group or mail) and those added by hand (``source`` manual, with an
    id)."""
    domain = svc.settings.network.domain
    with svc.db.read() as s:
        network = get_network(s, ref, who)
        provides = lifecycle_of(svc).provides
        return zone(network, domain), dns.listing(s, network, domain, provides=provides)


def add_record(
    svc: Services, who: Principal, ref: str, name: str, type_: str, value: str
) -> tuple[dict[str, Any], list[Job]]:
    """Add a record to the zone of a network of ``who``'s; its hosts' dnsmasq serve it once
    the jobs (one per host) are done."""
    with svc.db.write() as s:
        network = get_network(s, ref, who, "own")
        record = dns.add_record(
            s, network, svc.settings.network.domain, name, type_, value, who,
            provides=lifecycle_of(svc).provides,
        )  # fmt: skip
        jobs = queue_sync(s, svc.jobs, hosts_of(s, [network.id]))
        result = dns.describe_record(record), jobs
    svc.wake_jobs()
    return result


def delete_record(
    svc: Services, who: Principal, ref: str, record_id: str
) -> tuple[dict[str, Any], list[Job]]:
    """Remove a hand-made record from the zone of a network of ``who``'s."""
    with svc.db.write() as s:
        network = get_network(s, ref, who, "own")
        record = s.scalar(
            select(DnsRecord).where(DnsRecord.id == record_id, DnsRecord.network_id == network.id)
        )
        if record is None:
            raise NotFound(f"network {ref!r} has no record {record_id!r}", record=record_id)
        shown = dns.describe_record(record)
        s.delete(record)
        jobs = queue_sync(s, svc.jobs, hosts_of(s, [network.id]))
    svc.wake_jobs()
    return shown, jobs


# -- inside a transaction ------------------------------------------------------------------
# The steps of the use cases, and what other domains call on a session they hold.


def _create_network(
    session: Session,
    who: Principal,
    *,
    name: str,
    cidr: str,
    mode: str = "nat",
    visibility: str = "private",
    vlan: int | None = None,
    description: str = "",
) -> Network:
    """A network owned by ``who``. Its name is unique and no two networks' ranges overlap,
    whoever owns them (one address space per cloud: every host's networks share a
    namespace). ``InvalidRequest`` for a bad name, CIDR, mode; ``Conflict`` for a taken
    name, an overlapping range or a VLAN id in use; ``Forbidden`` for a VLAN id asked by a
    member (VLAN ids are the operator's)."""
    if not NAME.match(name):
        raise InvalidRequest(
            f"network name {name!r} must be 1-63 lower-case letters, digits or '-', not "
            "starting or ending with '-' (it is a DNS label)"
        )
    if mode not in NETWORK_MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(NETWORK_MODES)}")
    if visibility not in VISIBILITIES:
        raise InvalidRequest(f"visibility must be one of {', '.join(VISIBILITIES)}")
    if vlan is not None and not who.is_admin:
        raise Forbidden("only administrators may choose a VLAN id")
    if vlan is not None and not 1 <= vlan <= 4094:
        raise InvalidRequest("a VLAN id is 1 to 4094")
    network = parse_cidr(cidr)
    _lock_networks(session)
    taken = session.scalar(select(Network).where(Network.name == name))
    if taken is not None:
        if not may_see(session, who, taken, KIND):
            # Someone else's private network: say no more than that the name is not free.
            raise Conflict(f"the network name {name!r} is not available", network=name)
        raise Conflict(f"a network named {name!r} already exists", network=name)
    existing = {n.cidr: n for n in session.scalars(select(Network))}
    clash = overlapping(network, [(n.name, n.cidr) for n in existing.values()])
    if clash is not None:
        if not may_see(session, who, existing[clash[1]], KIND):
            raise Conflict(
                f"cidr {network} is not available: it overlaps a range in use; choose another",
                cidr=str(network),
            )
        raise Conflict(
            f"cidr {network} overlaps {clash[1]}, the range of network {clash[0]!r}: "
            "networks must not overlap",
            cidr=str(network),
            overlaps=clash[1],
        )
    if vlan is not None and session.scalar(select(Network.id).where(Network.vlan == vlan)):
        raise Conflict(f"VLAN {vlan} is used by another network", vlan=vlan)
    row = Network(
        vni=next_vni(session),
        name=name,
        owner=who.user_id,
        visibility=visibility,
        cidr=str(network),
        mode=mode,
        vlan=vlan,
        description=description,
    )
    session.add(row)
    session.flush()
    return row


def next_vni(session: Session) -> int:
    """The VXLAN id of a new network: one above the highest in use, so a deleted network's
    id is not soon used again (a host that missed the deletion would join the two); the
    lowest free one once the 24 bits are used up. Callers hold ``_lock_networks``."""
    highest = session.scalar(select(func.max(Network.vni))) or 0
    if highest < VNI_MAX:
        return highest + 1
    used = set(session.scalars(select(Network.vni).where(Network.vni.is_not(None))))
    free = next((v for v in range(1, VNI_MAX + 1) if v not in used), None)
    if free is None:
        raise Conflict("every VXLAN id is in use")
    return free


def _lock_networks(session: Session) -> None:
    """Serialise network creation: the overlap check reads every range. SQLite's writers
    are serial already; PostgreSQL needs the lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE networks IN SHARE ROW EXCLUSIVE MODE"))


def get_network(session: Session, ref: str, who: Principal, need: Need = "read") -> Network:
    """A network by id or name, if ``who`` may see it (else 404) and do what ``need`` says
    (else 403)."""
    network = session.get(Network, ref) or session.scalar(
        select(Network).where(Network.name == ref)
    )
    if network is None:
        raise NotFound(f"network {ref!r} does not exist", network=ref)
    check(session, who, KIND, network, need, ref)
    return network


def may_attach(session: Session, who: Principal, network: Network) -> None:
    """Instances join a network of their owner's or a public one; ``NotFound`` for a
    network ``who`` cannot see."""
    check(session, who, KIND, network, "read", network.name)


def _list_networks(session: Session, who: Principal) -> list[Network]:
    query = select(Network).order_by(Network.name)
    query = query.where(visible_to(who, KIND, Network.id, Network.owner, Network.visibility))
    return list(session.scalars(query))


def describe_network(
    session: Session, network: Network, domain: str, viewer: Principal | None = None
) -> dict[str, Any]:
    """The network as the API shows it; ``viewer`` sees its owner only if it is theirs (or
    they are an administrator)."""
    cidr = ipaddress.IPv4Network(network.cidr)
    instances = session.scalar(
        select(func.count()).where(Port.network_id == network.id, Port.instance_id.is_not(None))
    )
    # Every host of the network answers on the gateway: it counts once, and is kept for
    # the hosts even before one has the network.
    used = (instances or 0) + 1
    hosts = session.scalars(
        select(Host.name)
        .join(Port, Port.host_id == Host.id)
        .where(Port.network_id == network.id)
        .order_by(Host.name)
    )
    return {
        "id": network.id,
        "name": network.name,
        "cidr": network.cidr,
        "gateway": str(gateway(cidr)),
        "mode": network.mode,
        "zone": zone(network, domain),
        "vlan": network.vlan,
        "vni": network.vni,
        "owner": shown_owner(viewer, network.owner),
        "visibility": network.visibility,
        "status": network.status,
        "description": network.description,
        "instances": instances,
        "addresses_used": used,
        "addresses_free": cidr.num_addresses - 2 - used,
        "hosts": list(hosts),
        "created_at": network.created_at,
    }


def _delete_network(
    session: Session, registry: JobRegistry, network: Network, who: Principal
) -> Job:
    """Queue the deletion of a network no instance uses; ``InvalidState`` naming them
    otherwise."""
    check(session, who, KIND, network, "own", network.name)
    names = list(
        session.scalars(
            select(Instance.name)
            .join(Port, Port.instance_id == Instance.id)
            .where(Port.network_id == network.id)
            .order_by(Instance.name)
        )
    )
    if names:
        raise InvalidState(
            f"network {network.name!r} is in use by instance(s) {', '.join(names)}: delete "
            "them or move them off it first",
            network=network.id,
            instances=names,
        )
    if network.status == "deleting":
        raise InvalidState(f"network {network.name!r} is already being deleted")
    network.status = "deleting"
    return submit(
        session,
        registry.get("network.delete"),
        {"network_id": network.id},
        target_type="network",
        target_id=network.id,
        owner=network.owner,
    )


def connect(
    session: Session, instance: Instance, who: Principal, nics: Sequence[NicRequest]
) -> list[Port]:
    """Give ``instance`` (already placed on its host) one address on each requested
    network, in order (the first is its primary network), and its host a service address
    on each network where it has none. Raises what ``get_network``/``may_attach`` raise,
    ``InvalidRequest`` for a network asked twice or a bad address, ``Conflict`` for an
    address or name taken on the network."""
    ports, seen = [], set()
    for index, nic in enumerate(nics):
        network = get_network(session, nic.network, who)
        may_attach(session, who, network)
        if network.status != "active":
            raise InvalidState(f"network {network.name!r} is {network.status}")
        if network.id in seen:
            raise InvalidRequest(f"network {network.name!r} is asked for twice")
        seen.add(network.id)
        _name_free(session, network, instance.name)
        ports.append(_instance_port(session, network, instance, index, nic.ip))
        if instance.host_id:
            service_port(session, network, instance.host_id)
    return ports


def _name_free(session: Session, network: Network, hostname: str) -> None:
    if session.scalar(
        select(Port.id).where(Port.network_id == network.id, Port.hostname == hostname)
    ):
        raise Conflict(
            f"the name {hostname!r} is taken on network {network.name!r} by another instance",
            network=network.name,
            name=hostname,
        )


def _instance_port(
    session: Session, network: Network, instance: Instance, index: int, ip: str | None
) -> Port:
    cidr = ipaddress.IPv4Network(network.cidr)
    if ip is not None:
        address = check_requested(cidr, ip)
        holder = session.scalar(
            select(Port).where(Port.network_id == network.id, Port.ip == address)
        )
        if holder is not None:
            raise Conflict(
                f"ip {address} is taken on network {network.name!r}"
                + (" by a host's service address" if holder.host_id else ""),
                ip=address,
                network=network.name,
            )
        return _insert(session, _port(network, instance, index, address, True))
    for _ in range(ALLOCATION_TRIES):
        taken = session.scalars(select(Port.ip).where(Port.network_id == network.id))
        address = first_free(cidr, taken)
        try:
            return _insert(session, _port(network, instance, index, address, False))
        except _Taken:
            continue  # another request took it meanwhile (PostgreSQL): choose again
    raise Conflict(f"could not allocate an address on network {network.name!r}: retry")


def _port(network: Network, instance: Instance, index: int, ip: str, static: bool) -> Port:
    return Port(
        network_id=network.id,
        ip=ip,
        instance_id=instance.id,
        mac=new_mac(),
        hostname=instance.name,
        nic=index,
        static=static,
    )


class _Taken(Exception):
    pass


def _insert(session: Session, port: Port) -> Port:
    try:
        with session.begin_nested():
            session.add(port)
            session.flush()
    except IntegrityError:
        if port.ip and port.host_id is None and not port.static:
            raise _Taken() from None
        raise Conflict(
            f"ip {port.ip} or the name {port.hostname!r} was just taken on the network",
            ip=port.ip,
        ) from None
    return port


def service_port(session: Session, network: Network, host_id: str) -> Port:
    """The host's row on the network, made when it first carries it (an instance there, or
    one moving there): the host then answers its own guests on the network's gateway, the
    same address on every host (see docs/networks.md, "Networks across hosts")."""
    existing = session.scalar(
        select(Port).where(Port.network_id == network.id, Port.host_id == host_id)
    )
    if existing is not None:
        return existing
    cidr = ipaddress.IPv4Network(network.cidr)
    port = Port(network_id=network.id, host_id=host_id, ip=str(gateway(cidr)))
    return _insert(session, port)


def release(session: Session, instance_id: str) -> set[str]:
    """Free an instance's addresses and forwards, and the service addresses of hosts left
    without instances on a network; answers the hosts whose network state changed."""
    instance = session.get(Instance, instance_id)
    hosts = {instance.host_id} if instance is not None and instance.host_id else set()
    networks = set()
    for forward in session.scalars(
        select(PortForward).where(PortForward.instance_id == instance_id)
    ):
        session.delete(forward)
    for port in session.scalars(select(Port).where(Port.instance_id == instance_id)):
        networks.add(port.network_id)
        session.delete(port)
    session.flush()
    for network_id in networks:
        for host_id in list(hosts):
            left = session.scalar(
                select(func.count())
                .select_from(Port)
                .join(Instance, Port.instance_id == Instance.id)
                .where(Port.network_id == network_id, Instance.host_id == host_id)
            )
            if not left:
                for port in session.scalars(
                    select(Port).where(Port.network_id == network_id, Port.host_id == host_id)
                ):
                    session.delete(port)
    return {h for h in hosts if h}


def instance_nics(session: Session, instance_id: str, domain: str) -> list[dict[str, Any]]:
    """An instance's NICs as the API shows them, primary first."""
    return nics_by_instance(session, [instance_id], domain).get(instance_id, [])


def nics_by_instance(
    session: Session, instance_ids: Sequence[str], domain: str
) -> dict[str, list[dict[str, Any]]]:
    """The NICs of many instances in one query: instance id -> its NICs, primary first."""
    found: dict[str, list[dict[str, Any]]] = {}
    if not instance_ids:
        return found
    rows = session.execute(
        select(Port, Network)
        .join(Network, Port.network_id == Network.id)
        .where(Port.instance_id.in_(list(instance_ids)))
        .order_by(Port.instance_id, Port.nic)
    ).all()
    for port, network in rows:
        found.setdefault(port.instance_id or "", []).append(
            {
                "network": network.name,
                "network_id": network.id,
                "ip": port.ip,
                "mac": port.mac,
                "fqdn": f"{port.hostname}.{zone(network, domain)}",
                "static": port.static,
            }
        )
    return found


def default_nics(session: Session, who: Principal, name: str) -> list[NicRequest]:
    """The NIC an instance gets when its request names no network: one on the default
    network, if it exists and ``who`` may attach to it; else none."""
    if not name:
        return []
    network = session.scalar(select(Network).where(Network.name == name))
    if network is None or network.status != "active":
        return []
    try:
        may_attach(session, who, network)
    except (NotFound, Forbidden):
        return []
    return [NicRequest(network.id)]


def _addresses(session: Session, network: Network, who: Principal) -> list[dict[str, Any]]:
    """The network's addresses in use: hosts' service addresses and instances' NICs (an
    instance ``who`` may not see shows as ``(another user's)``)."""
    shown = []
    rows = session.execute(
        select(Port, Instance, Host)
        .outerjoin(Instance, Port.instance_id == Instance.id)
        .outerjoin(Host, Port.host_id == Host.id)
        .where(Port.network_id == network.id)
    ).all()
    for port, instance, host in sorted(rows, key=lambda r: ipaddress.ip_address(r[0].ip)):
        if host is not None:
            shown.append({"ip": port.ip, "kind": "host", "name": host.name, "mac": None})
        elif instance is not None:
            name = instance.name if may_see(session, who, instance) else "(another user's)"
            shown.append({"ip": port.ip, "kind": "instance", "name": name, "mac": port.mac})
    return shown
