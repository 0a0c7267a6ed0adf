"""``/hosts`` and agent enrolment: a thin layer over the compute domain's host use cases
(``lamina.compute.host_usecases``; admins only, but for enrolment, which its one-time token
authenticates)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.compute import host_usecases, migration
from lamina.identity.principal import Principal
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


@hosts.post("", status_code=201)
def add_host(
    body: HostCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    return host_usecases.add_host(svc, who, body.name, body.address, body.reserved_memory_mib)


@hosts.get("")
def list_hosts(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    return host_usecases.list_hosts(svc, who)


@hosts.get("/{ref}")
def show_host(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return host_usecases.show_host(svc, who, ref)


@hosts.post("/{ref}/evacuate", status_code=202)
def evacuate_host(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """Move every instance of the host away (a job whose state holds the report)."""
    return migration.evacuate_host(svc, who, ref)


@hosts.post("/{ref}/token")
def host_token(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return host_usecases.new_token(svc, who, ref)


class HostDisable(Body):
    reason: str | None = Field(None, max_length=255)


@hosts.post("/{ref}/disable")
def disable_host(
    ref: str,
    body: HostDisable | None = None,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    return host_usecases.disable_host(svc, who, ref, body.reason if body else None)


@hosts.post("/{ref}/enable")
def enable_host(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return host_usecases.enable_host(svc, who, ref)


@hosts.delete("/{ref}")
def remove_host(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return host_usecases.remove_host(svc, who, ref)


@enrolment.post("/hosts/enrol", tags=["hosts"])
def enrol(body: EnrolRequest, svc: Services = Depends(services)) -> EnrolResponse:
    """Authenticated by the one-time token in the body, not by a signature."""
    return host_usecases.enrol(svc, body.token, body.csr, body.migration_csr)


@enrolment.get(
    "/ca.pem",
    tags=["hosts"],
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {"schema": {"type": "string"}}}}},
)
def ca_certificate(svc: Services = Depends(services)) -> Response:
    return Response(host_usecases.ca_certificate(svc), media_type="application/x-pem-file")
