"""``/hosts`` and agent enrolment: a thin layer over the compute domain (admins only, but
for enrolment, which its one-time token authenticates)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.deps import services
from lamina.compute import hosts as host_service
from lamina.compute.models import Host
from lamina.compute.scheduler import capacity
from lamina.services import Services
from lamina.wire.protocol import EnrolRequest, EnrolResponse

hosts = APIRouter(prefix="/hosts", tags=["hosts"])
enrolment = APIRouter(tags=["hosts"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostCreate(Body):
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    address: str = Field(min_length=3, max_length=255)
    reserved_memory_mib: int | None = Field(None, ge=0)


def describe_host(host: Host, svc: Services, used: host_service.Usage | None) -> dict[str, Any]:
    room = capacity(host, used, svc.settings.compute)
    used = used or host_service.Usage(0, 0, 0)
    return {
        "id": host.id,
        "name": host.name,
        "address": host.address,
        "status": host.status,
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


@hosts.post("", status_code=201)
def add_host(body: HostCreate, svc: Services = Depends(services)) -> dict[str, Any]:
    reserve = body.reserved_memory_mib
    if reserve is None:
        reserve = svc.settings.compute.reserved_memory_mib
    with svc.db.write() as s:
        host, token = host_service.add_host(s, svc.ca, body.name, body.address, reserve)
        return {"host": describe_host(host, svc, None), "token": token}


@hosts.get("")
def list_hosts(svc: Services = Depends(services)) -> Any:
    with svc.db.read() as s:
        used = host_service.usage(s)
        return {
            "hosts": [describe_host(h, svc, used.get(h.id)) for h in host_service.list_hosts(s)]
        }


@hosts.get("/{ref}")
def show_host(ref: str, svc: Services = Depends(services)) -> Any:
    with svc.db.read() as s:
        host = host_service.get_host(s, ref)
        return {"host": describe_host(host, svc, host_service.usage(s).get(host.id))}


@hosts.post("/{ref}/token")
def host_token(ref: str, svc: Services = Depends(services)) -> Any:
    with svc.db.write() as s:
        host = host_service.get_host(s, ref)
        return {"token": host_service.new_token(s, svc.ca, host)}


@hosts.delete("/{ref}")
def remove_host(ref: str, svc: Services = Depends(services)) -> Any:
    with svc.db.write() as s:
        host = host_service.remove_host(s, ref)
        return {"host": describe_host(host, svc, None)}


@enrolment.post("/hosts/enrol", tags=["hosts"])
def enrol(body: EnrolRequest, svc: Services = Depends(services)) -> EnrolResponse:
    """Authenticated by the one-time token in the body, not by a signature."""
    with svc.db.write() as s:
        return host_service.enrol(s, svc.ca, body.token, body.csr)


@enrolment.get(
    "/ca.pem",
    tags=["hosts"],
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {"schema": {"type": "string"}}}}},
)
def ca_certificate(svc: Services = Depends(services)) -> Response:
    return Response(svc.ca.cert_pem, media_type="application/x-pem-file")
