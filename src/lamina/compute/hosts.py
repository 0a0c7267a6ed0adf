"""Hosts: registration, enrolment of their agent, heartbeats, capacity."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lamina.compute.models import Host, Instance
from lamina.db.types import utcnow
from lamina.errors import Conflict, Forbidden, InvalidRequest, InvalidState, NotFound
from lamina.identity.ca import CertificateAuthority
from lamina.wire.protocol import EnrolResponse, HostStatus, split_token
from lamina.wire.tls import fingerprint

TOKEN_LIFETIME = timedelta(hours=24)
ACTIVE = ("building", "running", "paused", "stopped", "error", "deleting")


@dataclass(frozen=True)
class Usage:
    vcpus: int
    memory_mib: int
    instances: int


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def add_host(
    session: Session, ca: CertificateAuthority, name: str, address: str, reserved_memory_mib: int
) -> tuple[Host, str]:
    """Register a host; return it and the one-time enrolment token for its agent."""
    parse_address(address)
    if session.scalar(select(Host).where(Host.name == name)):
        raise Conflict(f"a host named {name!r} already exists", host=name)
    secret = secrets.token_urlsafe(24)
    host = Host(
        name=name,
        address=address,
        status="pending",
        reserved_memory_mib=reserved_memory_mib,
        token_hash=_hash(secret),
        token_expires=utcnow() + TOKEN_LIFETIME,
    )
    session.add(host)
    session.flush()
    return host, f"{secret}.{ca.fingerprint}"


def new_token(session: Session, ca: CertificateAuthority, host: Host) -> str:
    """Issue a fresh enrolment token (e.g. to re-enrol a rebuilt host)."""
    secret = secrets.token_urlsafe(24)
    host.token_hash = _hash(secret)
    host.token_expires = utcnow() + TOKEN_LIFETIME
    return f"{secret}.{ca.fingerprint}"


def enrol(
    session: Session,
    ca: CertificateAuthority,
    token: str,
    csr: str,
    migration_csr: str | None = None,
) -> EnrolResponse:
    """Sign an agent's CSR (and its migration CSR, if any) if its token is valid; the token
    is then spent."""
    secret, ca_fp = split_token(token)
    if not hmac.compare_digest(ca_fp, ca.fingerprint):
        raise Forbidden("enrolment token was issued by another CA")
    host = session.scalar(select(Host).where(Host.token_hash == _hash(secret)).with_for_update())
    if host is None:
        raise Forbidden("enrolment token is unknown or already used")
    if host.token_expires is None or host.token_expires < utcnow():
        raise Forbidden("enrolment token has expired; run `lamina host token NAME` for another")
    address, _ = parse_address(host.address)
    cert = ca.sign(csr.encode(), common_name=host.name, sans=[address], server=True)
    # libvirtd and QEMU serve their peers and connect to them with this one.
    migration = (
        ca.sign(
            migration_csr.encode(),
            common_name=host.name,
            sans=[address],
            server=True,
            client=True,
        ).decode()
        if migration_csr
        else None
    )
    host.token_hash = None
    host.token_expires = None
    host.cert_fingerprint = fingerprint(cert)
    host.enrolled_at = utcnow()
    host.status = "down"  # until its first heartbeat
    return EnrolResponse(
        host_id=host.id,
        name=host.name,
        certificate=cert.decode(),
        ca_certificate=ca.cert_pem.decode(),
        migration_certificate=migration,
    )


def get_host(session: Session, ref: str) -> Host:
    host = session.get(Host, ref) or session.scalar(select(Host).where(Host.name == ref))
    if host is None:
        raise NotFound(f"host {ref!r} does not exist", host=ref)
    return host


def list_hosts(session: Session) -> list[Host]:
    return list(session.scalars(select(Host).order_by(Host.name)))


def remove_host(session: Session, ref: str) -> Host:
    host = get_host(session, ref)
    count = session.scalar(
        select(func.count())
        .select_from(Instance)
        .where(Instance.host_id == host.id, Instance.status.in_(ACTIVE))
    )
    if count:
        raise InvalidState(f"host {host.name!r} still has {count} instance(s); delete them first")
    # Deleted instances keep their record but no longer point at the host.
    session.execute(update(Instance).where(Instance.host_id == host.id).values(host_id=None))
    session.delete(host)
    return host


MAX_REASON = 255


def disable_host(session: Session, ref: str, reason: str | None) -> Host:
    """Keep new instances (and instances moving) off the host; it runs what it runs. A host
    already disabled keeps the time it was disabled and takes the new reason."""
    if reason is not None and (len(reason) > MAX_REASON or not reason.isprintable()):
        raise InvalidRequest(
            f"a reason is at most {MAX_REASON} printable characters on one line",
            fields=[{"field": "reason", "message": "too long, or has control characters"}],
        )
    host = get_host(session, ref)
    host.disabled_at = host.disabled_at or utcnow()
    host.disabled_reason = reason or None
    return host


def enable_host(session: Session, ref: str) -> Host:
    """Let the scheduler place on the host again (nothing changes if it was not disabled)."""
    host = get_host(session, ref)
    host.disabled_at = None
    host.disabled_reason = None
    return host


def usage(session: Session) -> dict[str, Usage]:
    """What the instances placed on each host take."""
    rows = session.execute(
        select(
            Instance.host_id,
            func.coalesce(func.sum(Instance.vcpus), 0),
            func.coalesce(func.sum(Instance.memory_mib), 0),
            func.count(),
        )
        .where(Instance.host_id.is_not(None), Instance.status.in_(ACTIVE))
        .group_by(Instance.host_id)
    )
    return {str(host_id): Usage(int(c), int(m), int(n)) for host_id, c, m, n in rows}


def record_heartbeat(session: Session, host: Host, status: HostStatus) -> None:
    host.status = "up"
    host.vcpus = status.info.vcpus
    host.memory_mib = status.info.memory_mib
    host.domain_type = status.info.domain_type
    host.agent_version = status.info.version
    host.tunnel_address = status.info.tunnel_address
    host.disk_free_bytes = status.disk.free_bytes
    host.disk_used_bytes = status.disk.used_bytes
    host.last_heartbeat = utcnow()
    host.last_error = None


def record_silence(session: Session, host: Host, error: str, down_after: float) -> bool:
    """Note a failed heartbeat; mark the host down once it has been silent long enough.
    Returns True when the host has just gone down."""
    host.last_error = error
    silent_since = host.last_heartbeat or host.enrolled_at or host.created_at
    if host.status == "up" and (utcnow() - silent_since).total_seconds() >= down_after:
        host.status = "down"
        return True
    return False


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
