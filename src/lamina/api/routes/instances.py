"""``/instances``: a thin layer over the compute domain's use cases
(``lamina.compute.usecases``), where who may do what is decided."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.compute import migration, usecases
from lamina.compute.lifecycle import NicRequest
from lamina.identity.principal import Principal
from lamina.services import Services

instances = APIRouter(prefix="/instances", tags=["instances"])

#: What ``?status=`` filters on: the statuses an instance is stored with
#: (``lamina.compute.models.INSTANCE_STATUSES``; a test holds the two together). Anything
#: else is a 400 listing these, not an empty listing.
Status = Literal["building", "running", "paused", "stopped", "error", "deleting", "deleted"]
STATUS_HELP = "Only instances in this status"


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


@instances.post("", status_code=202)
def create_instance(
    body: InstanceCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return usecases.create_instance(
        svc,
        who,
        name=body.name,
        vcpus=body.vcpus,
        memory_mib=body.memory_mib,
        kernel=body.kernel,
        initrd=body.initrd,
        cmdline=body.cmdline,
        disk_image=body.disk_image,
        disk_size_mib=body.disk_size_mib,
        host=body.host,
        visibility=body.visibility,
        networks=nics_of(body.networks),
        group=body.group,
    )


@instances.get("")
def list_instances(
    status: Status | None = Query(None, description=STATUS_HELP),
    host: str | None = None,
    limit: int = Query(1000, ge=1, le=10000),
    marker: str | None = Query(None, description="Last id of the previous page"),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Brief listing: id, name, status, host, vcpus, memory_mib; oldest first."""
    body = usecases.list_brief(svc, who, status=status, host=host, limit=limit, marker=marker)
    return Response(body, media_type="application/json")


@instances.get("/detail")
def list_instances_detail(
    status: Status | None = Query(None, description=STATUS_HELP),
    host: str | None = None,
    limit: int = Query(1000, ge=1, le=10000),
    marker: str | None = Query(None, description="Last id of the previous page"),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Full listing; oldest first."""
    return usecases.list_detail(svc, who, status=status, host=host, limit=limit, marker=marker)


@instances.get("/{ref}")
def show_instance(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return usecases.show_instance(svc, who, ref)


@instances.patch("/{ref}")
def update_instance(
    ref: str,
    body: InstanceUpdate,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Make an instance public (read-only to every user) or private again; owners only."""
    return usecases.set_visibility(svc, who, ref, body.visibility)


@instances.patch("/{ref}/config")
def update_config(
    ref: str,
    body: ConfigUpdate,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Set (or, with null, remove) the instance's configuration items, which it reads from
    the configuration service."""
    return usecases.update_config(svc, who, ref, body.items)


@instances.delete("/{ref}", status_code=202)
def delete_instance(
    ref: str,
    force: bool = False,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    return usecases.delete_instance(svc, who, ref, force)


@instances.get("/{ref}/console")
def console(
    ref: str,
    offset: int = Query(0, ge=0),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """The console can hold secrets a guest prints: it needs ``operate`` access."""
    return usecases.console(svc, who, ref, offset)


@instances.get("/{ref}/grants")
def list_grants(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return usecases.list_grants(svc, who, ref)


@instances.post("/{ref}/grants", status_code=201)
def share(
    ref: str,
    body: GrantCreate,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Share a private instance with another user (Glance's image members)."""
    return usecases.share(svc, who, ref, body.user, body.access)


@instances.delete("/{ref}/grants/{user}")
def unshare(
    ref: str, user: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return usecases.unshare(svc, who, ref, user)


class MigrateBody(Body):
    host: str | None = Field(
        None, max_length=63, description="Destination host (name or id); none: any other"
    )
    mode: Literal["auto", "live", "cold"] = Field(
        "auto",
        description="live: running or paused; cold: stopped (a running one is stopped "
        "and started again there); auto: live if it runs",
    )


@instances.post("/{ref}/migrate", status_code=202)
def migrate(
    ref: str,
    body: MigrateBody | None = None,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Move the instance to another host (administrators only)."""
    body = body or MigrateBody()
    return migration.migrate_instance(svc, who, ref, body.host, body.mode)


# Last: its path would otherwise swallow /{ref}/grants.
@instances.post("/{ref}/{action}", status_code=202)
def act(
    ref: str,
    action: Literal["start", "stop", "pause", "resume", "reboot"],
    force: bool = False,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    return usecases.act(svc, who, ref, action, force)


def nics_of(bodies: list[NicBody] | None) -> list[NicRequest] | None:
    return None if bodies is None else [NicRequest(b.network, b.ip) for b in bodies]
