"""``/instances``: a thin layer over the compute domain; who may do what is decided there."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.compute import instances as instance_service
from lamina.compute.boot import resolve_boot
from lamina.compute.instances import KIND
from lamina.compute.listing import brief_listing
from lamina.compute.models import Host
from lamina.identity import access
from lamina.identity.principal import Principal
from lamina.jobs.views import describe_job
from lamina.network.lifecycle import attach_nics
from lamina.network.service import NicRequest, instance_nics, nics_by_instance
from lamina.services import Services

instances = APIRouter(prefix="/instances", tags=["instances"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NicBody(Body):
    network: str = Field(min_length=1, max_length=63, description="Network name or id")
    ip: str | None = Field(None, max_length=15, description="A static address on it")


#: What a boot file field takes (``lamina.compute.boot``).
BOOT_SOURCE = (
    "An image you may read (its id or name), an http(s):// URL, or (administrators only, "
    "inside compute.boot_paths) a host path or file:// URL"
)


class InstanceCreate(Body):
    name: str = Field(min_length=1, max_length=63)
    vcpus: int = Field(1, ge=1, le=64)
    memory_mib: int = Field(256, ge=32, le=1024 * 1024)
    kernel: str | None = Field(None, max_length=2048, description=BOOT_SOURCE)
    initrd: str | None = Field(None, max_length=2048, description=BOOT_SOURCE)
    cmdline: str = Field("", max_length=4096)
    disk_image: str | None = Field(None, max_length=2048, description=BOOT_SOURCE)
    disk_size_mib: int | None = Field(None, ge=1, le=64 * 1024 * 1024)
    host: str | None = None
    visibility: Literal["private", "public"] = "private"
    #: In order, the first being the primary; None: the default network (if any).
    networks: list[NicBody] | None = Field(None, max_length=8)
    group: str | None = Field(None, max_length=63)


class InstanceUpdate(Body):
    visibility: Literal["private", "public"]


class ConfigUpdate(Body):
    #: name -> value to set, or null to remove.
    items: dict[str, str | None] = Field(max_length=256)


class GrantCreate(Body):
    user: str = Field(min_length=1, max_length=64, description="The grantee's access key")
    access: Literal["read", "operate"] = "read"


def _describe(s: Session, svc: Services, instance: Any, who: Principal) -> dict[str, Any]:
    nics = instance_nics(s, instance.id, svc.settings.network.domain)
    return instance_service.describe(instance, s.get(Host, instance.host_id), nics, who)


@instances.post("", status_code=202)
def create_instance(
    body: InstanceCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    instance_service.check_name(body.name)  # before the boot files are looked up
    with svc.db.write() as s:
        boot = resolve_boot(
            s,
            who,
            svc.settings,
            kernel=body.kernel,
            initrd=body.initrd,
            disk_image=body.disk_image,
        )
        instance, job = instance_service.create_instance(
            s,
            svc.jobs,
            svc.settings.compute,
            name=body.name,
            vcpus=body.vcpus,
            memory_mib=body.memory_mib,
            boot=boot,
            cmdline=body.cmdline,
            disk_size_bytes=body.disk_size_mib * 1024 * 1024 if body.disk_size_mib else None,
            host=body.host,
            visibility=body.visibility,
            attach=attach_nics(who, nics_of(body.networks), svc.settings.network.default_network),
            group=body.group,
            who=who,
        )
        result = {"instance": _describe(s, svc, instance, who), "job": describe_job(job)}
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
        body = brief_listing(s, who, status=status, host=host, limit=limit, marker=marker)
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
        by_id = {h.id: h for h in s.scalars(select(Host))}
        found = instance_service.list_instances(
            s, status=status, host=host, limit=limit, marker=marker, who=who
        )
        nics = nics_by_instance(s, [i.id for i in found], svc.settings.network.domain)
        return {
            "instances": [
                instance_service.describe(i, by_id.get(i.host_id or ""), nics.get(i.id, []), who)
                for i in found
            ]
        }


@instances.get("/{ref}")
def show_instance(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        return {"instance": _describe(s, svc, instance_service.get_instance(s, ref, who), who)}


@instances.patch("/{ref}")
def update_instance(
    ref: str,
    body: InstanceUpdate,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Make an instance public (read-only to every user) or private again; owners only."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "own")
        instance.visibility = body.visibility
        return {"instance": _describe(s, svc, instance, who)}


@instances.patch("/{ref}/config")
def update_config(
    ref: str,
    body: ConfigUpdate,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Set (or, with null, remove) the instance's configuration items, which it reads from
    the configuration service."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        instance_service.update_config(instance, body.items)
        return {"config": instance.config or {}}


@instances.delete("/{ref}", status_code=202)
def delete_instance(
    ref: str,
    force: bool = False,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "own")
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
    """The console can hold secrets a guest prints: it needs ``operate`` access."""
    with svc.db.read() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        host = s.get(Host, instance.host_id)
        name = instance.domain_name
    if host is None:
        return {"console": {"data": "", "offset": offset}}
    chunk = svc.agents.for_host(host).console(name, offset)
    return {"console": chunk.model_dump()}


@instances.get("/{ref}/grants")
def list_grants(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        instance = instance_service.get_instance(s, ref, who)
        found = access.grants(s, who, KIND, instance, ref)
        return {"grants": [_grant(g, user) for g, user in found]}


@instances.post("/{ref}/grants", status_code=201)
def share(
    ref: str,
    body: GrantCreate,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Share a private instance with another user (Glance's image members)."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who)
        grant = access.share(s, who, KIND, instance, ref, body.user, body.access)
        return {"grant": _grant(grant, body.user)}


@instances.delete("/{ref}/grants/{user}")
def unshare(
    ref: str, user: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who)
        access.unshare(s, who, KIND, instance, ref, user)
        return {"revoked": {"user": user, "instance": instance.id}}


# Last: its path would otherwise swallow /{ref}/grants.
@instances.post("/{ref}/{action}", status_code=202)
def act(
    ref: str,
    action: Literal["start", "stop", "pause", "resume", "reboot"],
    force: bool = False,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        job = instance_service.act(s, svc.jobs, instance, action, force, who.user_id)
        result = {"job": describe_job(job)}
    svc.wake_jobs()
    return result


def _grant(grant: Any, user: str) -> dict[str, Any]:
    return {"user": user, "access": grant.access, "created_at": grant.created_at}


def nics_of(bodies: list[NicBody] | None) -> list[NicRequest] | None:
    return None if bodies is None else [NicRequest(b.network, b.ip) for b in bodies]
