"""``/networks`` (networks and their DNS records) and ``/instances/{ref}/forwards`` (port
forwards): a thin layer over ``lamina.network``; who may do what is decided there."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.compute import instances as instance_service
from lamina.errors import NotFound
from lamina.identity.principal import Principal
from lamina.jobs.views import describe_job
from lamina.network import dns, forwards, service
from lamina.network.models import DnsRecord
from lamina.network.sync import hosts_of, queue_sync
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


def _domain(svc: Services) -> str:
    return svc.settings.network.domain


@networks.post("", status_code=201)
def create_network(
    body: NetworkCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.write() as s:
        network = service.create_network(s, who, **body.model_dump())
        return {"network": service.describe_network(s, network, _domain(svc))}


@networks.get("")
def list_networks(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    with svc.db.read() as s:
        return {
            "networks": [
                service.describe_network(s, n, _domain(svc), who)
                for n in service.list_networks(s, who)
            ]
        }


@networks.get("/{ref}")
def show_network(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        network = service.get_network(s, ref, who)
        shown = service.describe_network(s, network, _domain(svc), who)
        shown["addresses"] = service.addresses(s, network, who)
        return {"network": shown}


@networks.patch("/{ref}")
def update_network(
    ref: str, body: NetworkUpdate, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    """Make a network public (every user may attach instances) or private; owners only."""
    with svc.db.write() as s:
        network = service.get_network(s, ref, who, "own")
        if body.visibility is not None:
            network.visibility = body.visibility
        if body.description is not None:
            network.description = body.description
        return {"network": service.describe_network(s, network, _domain(svc))}


@networks.delete("/{ref}", status_code=202)
def delete_network(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.write() as s:
        network = service.get_network(s, ref, who, "own")
        job = service.delete_network(s, svc.jobs, network, who)
        result = {"job": describe_job(job)}
    svc.wake_jobs()
    return result


@networks.get("/{ref}/records")
def list_records(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """Every record of the network's zone: those Lamina keeps for its instances (``source``
    instance, group or mail) and those added by hand (``source`` manual, with an id)."""
    with svc.db.read() as s:
        network = service.get_network(s, ref, who)
        return {
            "zone": dns.zone(network, _domain(svc)),
            "records": dns.listing(s, network, _domain(svc)),
        }


@networks.post("/{ref}/records", status_code=201)
def add_record(
    ref: str, body: RecordCreate, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    """Add a record to the network's zone; its hosts' dnsmasq serve it once the job is done."""
    with svc.db.write() as s:
        network = service.get_network(s, ref, who, "own")
        record = dns.add_record(s, network, _domain(svc), body.name, body.type, body.value, who)
        jobs = queue_sync(s, svc.jobs, hosts_of(s, [network.id]))
        result = {"record": dns.describe_record(record), "jobs": [describe_job(j) for j in jobs]}
    svc.wake_jobs()
    return result


@networks.delete("/{ref}/records/{record_id}")
def delete_record(
    ref: str, record_id: str, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    with svc.db.write() as s:
        network = service.get_network(s, ref, who, "own")
        record = s.scalar(
            select(DnsRecord).where(DnsRecord.id == record_id, DnsRecord.network_id == network.id)
        )
        if record is None:
            raise NotFound(f"network {ref!r} has no record {record_id!r}", record=record_id)
        shown = dns.describe_record(record)
        s.delete(record)
        jobs = queue_sync(s, svc.jobs, hosts_of(s, [network.id]))
        result = {"record": shown, "jobs": [describe_job(j) for j in jobs]}
    svc.wake_jobs()
    return result


# -- port forwards --------------------------------------------------------------------------


@instance_forwards.get("/{ref}/forwards")
def list_forwards(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        instance = instance_service.get_instance(s, ref, who)
        return {
            "forwards": [
                forwards.describe_forward(f) for f in forwards.list_forwards(s, instance.id)
            ]
        }


@instance_forwards.post("/{ref}/forwards", status_code=202)
def expose(
    ref: str, body: ForwardCreate, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    """Publish a port of the instance on its host (bound to 127.0.0.1 unless ``bind``
    says otherwise); the job answers which host port when none was asked for."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        forward, job = forwards.expose(
            s, svc.jobs, instance, guest_port=body.guest_port, host_port=body.host_port,
            bind=body.bind, network=body.network, requester=who.user_id,
        )  # fmt: skip
        result = {"forward": forwards.describe_forward(forward), "job": describe_job(job)}
    svc.wake_jobs()
    return result


@instance_forwards.delete("/{ref}/forwards/{forward}", status_code=202)
def unexpose(
    ref: str, forward: str, svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:  # fmt: skip
    """Stop publishing a port (``forward``: its id or the guest port)."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        row = forwards.find_forward(s, instance, forward)
        job = forwards.unexpose(s, svc.jobs, row, who.user_id)
        result = {"forward": forwards.describe_forward(row), "job": describe_job(job)}
    svc.wake_jobs()
    return result
