"""Hosts: the use cases a front end calls (``/hosts``, agent enrolment, the CA certificate).

Each takes the container (and, but for enrolment, which its one-time token authenticates,
the caller: administrators only), runs its own transaction and returns what the API shows.
The functions of ``lamina.compute.hosts`` work inside a transaction the caller holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lamina.compute import hosts as host_service
from lamina.compute.models import Host
from lamina.compute.scheduler import capacity
from lamina.identity.accounts import require_admin
from lamina.identity.principal import Principal
from lamina.wire.protocol import EnrolResponse

if TYPE_CHECKING:
    from lamina.services import Services


def add_host(
    svc: Services, who: Principal, name: str, address: str, reserved_memory_mib: int | None
) -> dict[str, Any]:
    """Register a host and the one-time token its agent enrols with: ``{"host", "token"}``.
    ``reserved_memory_mib``: None for ``compute.reserved_memory_mib``."""
    require_admin(who)
    reserve = reserved_memory_mib
    if reserve is None:
        reserve = svc.settings.compute.reserved_memory_mib
    with svc.db.write() as s:
        host, token = host_service.add_host(s, svc.ca, name, address, reserve)
        return {"host": describe_host(svc, host, None), "token": token}


def list_hosts(svc: Services, who: Principal) -> dict[str, Any]:
    require_admin(who)
    with svc.db.read() as s:
        used = host_service.usage(s)
        return {
            "hosts": [describe_host(svc, h, used.get(h.id)) for h in host_service.list_hosts(s)]
        }


def show_host(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    require_admin(who)
    with svc.db.read() as s:
        host = host_service.get_host(s, ref)
        return {"host": describe_host(svc, host, host_service.usage(s).get(host.id))}


def new_token(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    """A new one-time enrolment token for the host (its agent enrols again with it)."""
    require_admin(who)
    with svc.db.write() as s:
        host = host_service.get_host(s, ref)
        return {"token": host_service.new_token(s, svc.ca, host)}


def disable_host(svc: Services, who: Principal, ref: str, reason: str | None) -> dict[str, Any]:
    """No new placements on the host (nor migrations to it) until it is enabled again; its
    instances keep running. ``{"host"}``."""
    require_admin(who)
    with svc.db.write() as s:
        host = host_service.disable_host(s, ref, reason)
        return {"host": describe_host(svc, host, host_service.usage(s).get(host.id))}


def enable_host(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    """The scheduler may place on the host again. ``{"host"}``."""
    require_admin(who)
    with svc.db.write() as s:
        host = host_service.enable_host(s, ref)
        return {"host": describe_host(svc, host, host_service.usage(s).get(host.id))}


def remove_host(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    require_admin(who)
    with svc.db.write() as s:
        host = host_service.remove_host(s, ref)
        return {"host": describe_host(svc, host, None)}


def enrol(svc: Services, token: str, csr: str, migration_csr: str | None = None) -> EnrolResponse:
    """An agent's enrolment: authenticated by its one-time ``token``, not by a caller."""
    with svc.db.write() as s:
        return host_service.enrol(s, svc.ca, token, csr, migration_csr)


def ca_certificate(svc: Services) -> bytes:
    """The manager's CA certificate (PEM), which agents and clients verify it by."""
    return svc.ca.cert_pem


def describe_host(svc: Services, host: Host, used: host_service.Usage | None) -> dict[str, Any]:
    room = capacity(host, used, svc.settings.compute)
    used = used or host_service.Usage(0, 0, 0)
    return {
        "id": host.id,
        "name": host.name,
        "address": host.address,
        "status": host.status,
        "disabled": host.disabled,
        "disabled_reason": host.disabled_reason,
        "disabled_at": host.disabled_at,
        "vcpus": host.vcpus,
        "memory_mib": host.memory_mib,
        "reserved_memory_mib": host.reserved_memory_mib,
        "vcpus_used": used.vcpus,
        "memory_used_mib": used.memory_mib,
        "instances": used.instances,
        "vcpus_free": max(room.vcpus, 0),
        "memory_free_mib": max(room.memory_mib, 0),
        "disk_free_bytes": host.disk_free_bytes,
        "disk_used_bytes": host.disk_used_bytes,
        "domain_type": host.domain_type,
        "agent_version": host.agent_version,
        "enrolled": host.cert_fingerprint is not None,
        "last_heartbeat": host.last_heartbeat,
        "last_error": host.last_error,
        "created_at": host.created_at,
    }
