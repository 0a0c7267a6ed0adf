"""``/networks`` (networks and their DNS records) and ``/instances/{ref}/forwards`` (port
forwards): a thin layer over ``lamina.network.service`` and ``lamina.network.forwarding``;
who may do what is decided there."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.identity.principal import Principal
from lamina.jobs.views import describe_job
from lamina.network import forwarding, service
from lamina.services import Services

networks = APIRouter(prefix="/networks", tags=["networks"])
instance_forwards = APIRouter(prefix="/instances", tags=["networks"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkCreate(Body):
    name: str = Field(min_length=1, max_length=63)
    cidr: str = Field(min_length=1, max_length=18)
    mode: Literal["nat", "isolated"] = "nat"
    visibility: Literal["private", "public"] = "private"
    vlan: int | None = Field(None, ge=1, le=4094)
    description: str = Field("", max_length=1024)


class NetworkUpdate(Body):
    visibility: Literal["private", "public"] | None = None
    description: str | None = Field(None, max_length=1024)


class RecordCreate(Body):
    name: str = Field(min_length=1, max_length=253)
    type: str = Field(min_length=1, max_length=8)
    value: str = Field(min_length=1, max_length=1024)


class ForwardCreate(Body):
    guest_port: int = Field(ge=1, le=65535)
    host_port: int | None = Field(None, ge=1, le=65535)
    bind: str = Field("127.0.0.1", max_length=45)
    network: str | None = Field(None, max_length=63)


@networks.post("", status_code=201)
def create_network(
    body: NetworkCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return {"network": service.create_network(svc, who, **body.model_dump())}


@networks.get("")
def list_networks(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    return {"networks": service.list_networks(svc, who)}


@networks.get("/{ref}")
def show_network(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return {"network": service.show_network(svc, who, ref)}


@networks.patch("/{ref}")
def update_network(
    ref: str, body: NetworkUpdate, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    """Make a network public (every user may attach instances) or private; owners only."""
    shown = service.update_network(
        svc, who, ref, visibility=body.visibility, description=body.description
    )
    return {"network": shown}


@networks.delete("/{ref}", status_code=202)
def delete_network(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return {"job": describe_job(service.delete_network(svc, who, ref))}


@networks.get("/{ref}/records")
def list_records(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """Every record of the network's zone: those Lamina keeps for its instances (``source``
    instance, group or mail) and those added by hand (``source`` manual, with an id)."""
    zone, records = service.list_records(svc, who, ref)
    return {"zone": zone, "records": records}


@networks.post("/{ref}/records", status_code=201)
def add_record(
    ref: str, body: RecordCreate, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    """Add a record to the network's zone; its hosts' dnsmasq serve it once the job is done."""
    record, jobs = service.add_record(svc, who, ref, body.name, body.type, body.value)
    return {"record": record, "jobs": [describe_job(j) for j in jobs]}


@networks.delete("/{ref}/records/{record_id}")
def delete_record(
    ref: str, record_id: str, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    record, jobs = service.delete_record(svc, who, ref, record_id)
    return {"record": record, "jobs": [describe_job(j) for j in jobs]}


# -- port forwards --------------------------------------------------------------------------


@instance_forwards.get("/{ref}/forwards")
def list_forwards(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return {"forwards": forwarding.list_forwards(svc, who, ref)}


@instance_forwards.post("/{ref}/forwards", status_code=202)
def expose(
    ref: str, body: ForwardCreate, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    """Publish a port of the instance on its host (bound to 127.0.0.1 unless ``bind``
    says otherwise); the job answers which host port when none was asked for."""
    forward, job = forwarding.expose(
        svc, who, ref, guest_port=body.guest_port, host_port=body.host_port, bind=body.bind,
        network=body.network,
    )  # fmt: skip
    return {"forward": forward, "job": describe_job(job)}


@instance_forwards.delete("/{ref}/forwards/{forward}", status_code=202)
def unexpose(
    ref: str, forward: str, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    """Stop publishing a port (``forward``: its id or the guest port)."""
    shown, job = forwarding.unexpose(svc, who, ref, forward)
    return {"forward": shown, "job": describe_job(job)}
