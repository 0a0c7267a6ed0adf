"""``/hosts`` and ``/instances``: a thin layer over the compute domain."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from lamina.agent.wire import EnrolRequest, EnrolResponse
from lamina.api.auth import Principal, principal
from lamina.api.deps import services
from lamina.compute import hosts as host_service
from lamina.compute import instances as instance_service
from lamina.compute.listing import brief_listing
from lamina.compute.models import Host, Instance
from lamina.compute.scheduler import capacity
from lamina.jobs.views import describe_job
from lamina.services import Services

hosts = APIRouter(prefix="/hosts", tags=["hosts"])
enrolment = APIRouter(tags=["hosts"])
instances = APIRouter(prefix="/instances", tags=["instances"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostCreate(Body):
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    address: str = Field(min_length=3, max_length=255)
    reserved_memory_mib: int | None = Field(None, ge=0)


class InstanceCreate(Body):
    name: str = Field(min_length=1, max_length=63)
    vcpus: int = Field(1, ge=1, le=64)
    memory_mib: int = Field(256, ge=32, le=1024 * 1024)
    kernel: str | None = Field(None, max_length=2048)
    initrd: str | None = Field(None, max_length=2048)
    cmdline: str = Field("", max_length=4096)
    disk_image: str | None = Field(None, max_length=2048)
    disk_size_mib: int | None = Field(None, ge=1, le=64 * 1024 * 1024)
    host: str | None = None


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
def add_host(
    body: HostCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    reserve = body.reserved_memory_mib
    if reserve is None:
        reserve = svc.settings.compute.reserved_memory_mib
    with svc.db.write() as s:
        host, token = host_service.add_host(s, svc.ca, body.name, body.address, reserve)
        return {"host": describe_host(host, svc, None), "token": token}


@hosts.get("")
def list_hosts(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    with svc.db.read() as s:
        used = host_service.usage(s)
        return {
            "hosts": [describe_host(h, svc, used.get(h.id)) for h in host_service.list_hosts(s)]
        }


@hosts.get("/{ref}")
def show_host(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        host = host_service.get_host(s, ref)
        return {"host": describe_host(host, svc, host_service.usage(s).get(host.id))}


@hosts.post("/{ref}/token")
def host_token(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.write() as s:
        host = host_service.get_host(s, ref)
        return {"token": host_service.new_token(s, svc.ca, host)}


@hosts.delete("/{ref}")
def remove_host(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.write() as s:
        host = host_service.remove_host(s, ref)
        return {"host": describe_host(host, svc, None)}


@enrolment.post("/hosts/enrol", tags=["hosts"])
def enrol(body: EnrolRequest, svc: Services = Depends(services)) -> EnrolResponse:
    """Authenticated by the one-time token in the body, not by a signature."""
    with svc.db.write() as s:
        return host_service.enrol(s, svc.ca, body.token, body.csr)


@enrolment.get("/ca.pem", tags=["hosts"])
def ca_certificate(svc: Services = Depends(services)) -> Response:
    return Response(svc.ca.cert_pem, media_type="application/x-pem-file")


def _hosts_by_id(s: Any) -> dict[str, Host]:
    return {h.id: h for h in s.scalars(select(Host))}


@instances.post("", status_code=202)
def create_instance(
    body: InstanceCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.write() as s:
        instance, job = instance_service.create_instance(
            s,
            svc.jobs,
            svc.settings.compute,
            name=body.name,
            vcpus=body.vcpus,
            memory_mib=body.memory_mib,
            kernel=body.kernel,
            initrd=body.initrd,
            cmdline=body.cmdline,
            disk_image=body.disk_image,
            disk_size_bytes=body.disk_size_mib * 1024 * 1024 if body.disk_size_mib else None,
            host=body.host,
            owner=who.name,
        )
        host = s.get(Host, instance.host_id)
        result = {"instance": instance_service.describe(instance, host), "job": describe_job(job)}
    svc.wake_jobs()
    return result


@instances.get("")
def list_instances(
    status: str | None = None,
    host: str | None = None,
    limit: int = Query(1000, ge=1, le=10000),
    marker: str | None = Query(None, description="Last id of the previous page"),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Brief listing: id, name, status, host, vcpus, memory_mib; oldest first."""
    with svc.db.read() as s:
        body = brief_listing(s, status=status, host=host, limit=limit, marker=marker)
    return Response(body, media_type="application/json")


@instances.get("/detail")
def list_instances_detail(
    status: str | None = None,
    host: str | None = None,
    limit: int = Query(1000, ge=1, le=10000),
    marker: str | None = Query(None, description="Last id of the previous page"),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Full listing; oldest first."""
    with svc.db.read() as s:
        by_id = _hosts_by_id(s)
        found = instance_service.list_instances(
            s, status=status, host=host, limit=limit, marker=marker
        )
        return {
            "instances": [instance_service.describe(i, by_id.get(i.host_id or "")) for i in found]
        }


@instances.get("/{ref}")
def show_instance(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        instance = instance_service.get_instance(s, ref)
        return {"instance": instance_service.describe(instance, s.get(Host, instance.host_id))}


@instances.post("/{ref}/{action}", status_code=202)
def act(
    ref: str,
    action: Literal["start", "stop", "pause", "resume", "reboot"],
    force: bool = False,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref)
        job = instance_service.act(s, svc.jobs, instance, action, force)
        result = {"job": describe_job(job)}
    svc.wake_jobs()
    return result


@instances.delete("/{ref}", status_code=202)
def delete_instance(
    ref: str,
    force: bool = False,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref)
        job = instance_service.delete_instance(s, svc.jobs, instance, force)
        result = {"job": describe_job(job)}
    svc.wake_jobs()
    return result


@instances.get("/{ref}/console")
def console(
    ref: str,
    offset: int = Query(0, ge=0),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    with svc.db.read() as s:
        instance = instance_service.get_instance(s, ref)
        host = s.get(Host, instance.host_id)
        name = instance.domain_name
    if host is None:
        return {"console": {"data": "", "offset": offset}}
    chunk = svc.agents.for_host(host).console(name, offset)
    return {"console": chunk.model_dump()}


__all__ = ["Instance", "enrolment", "hosts", "instances"]
