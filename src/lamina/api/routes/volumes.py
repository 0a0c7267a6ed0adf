"""``/volumes`` and ``/snapshots``: a thin layer over ``lamina.volumes.service``; who may do
what and which state allows it is decided there. Long work answers 202 with its job."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.compute.models import Host
from lamina.identity.principal import Principal
from lamina.jobs.views import describe_job
from lamina.services import Services
from lamina.volumes import service
from lamina.volumes.models import SNAPSHOT_STATUSES, VOLUME_STATUSES

volumes = APIRouter(prefix="/volumes", tags=["volumes"])
snapshots = APIRouter(prefix="/snapshots", tags=["volumes"])
#: What the database holds; the real limit is ``volumes.max_size_bytes`` (413 past it).
MAX_SIZE = 2**63 - 1


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VolumeCreateBody(Body):
    size_bytes: int | None = Field(None, gt=0, le=MAX_SIZE)
    snapshot: str | None = Field(None, max_length=40)
    comment: str = Field("", max_length=1024)
    host: str | None = None
    clone: bool = True


class VolumeExtendBody(Body):
    size_bytes: int = Field(gt=0, le=MAX_SIZE)


class AttachBody(Body):
    instance: str = Field(min_length=1, max_length=63)
    device: str | None = Field(None, pattern=r"^vd[b-z]$")


class SnapshotCreateBody(Body):
    volume: str = Field(min_length=1, max_length=40)
    comment: str = Field("", max_length=1024)


def _status_filter(statuses: tuple[str, ...]) -> Any:
    return Query(None, pattern="^(" + "|".join(statuses) + ")$")


def _room_of(svc: Services, who: Principal, volume_id: str) -> service.Room | None:
    """The room on a volume's server (None when it has none: the state check refuses)."""
    with svc.db.read() as s:
        volume = service.get_volume(s, volume_id, who, "operate")
        host = s.get(Host, volume.host_id) if volume.host_id else None
    return service.room_on(svc, host) if host is not None else None


@volumes.post("", status_code=202)
def create_volume(
    body: VolumeCreateBody, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        server = service.server_for(s, who, body.host, body.snapshot)
    room = service.room_on(svc, server)
    with svc.db.write() as s:
        volume, job = service.create_volume(
            s,
            svc.jobs,
            who,
            size_bytes=body.size_bytes,
            snapshot=body.snapshot,
            comment=body.comment,
            host=body.host,
            clone=body.clone,
            room=room,
        )
        result = {"volume": service.describe_volume(s, volume), "job": describe_job(job)}
    svc.wake_jobs()
    return result


@volumes.get("")
def describe_volumes(
    volume_id: list[str] | None = Query(None, alias="id"),
    status: str | None = _status_filter(VOLUME_STATUSES),
    instance: str | None = None,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """The caller's volumes (every volume, for admins), oldest first; ``id`` may repeat."""
    with svc.db.read() as s:
        found = service.list_volumes(s, who, ids=volume_id, status=status, instance=instance)
        return {"volumes": [service.describe_volume(s, v) for v in found]}


@volumes.get("/{volume_id}")
def show_volume(
    volume_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        return {"volume": service.describe_volume(s, service.get_volume(s, volume_id, who))}


@volumes.delete("/{volume_id}", status_code=202)
def delete_volume(
    volume_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.write() as s:
        volume = service.get_volume(s, volume_id, who, "own", lock=True)
        job = service.delete_volume(s, svc.jobs, volume)
        result = {"volume": service.describe_volume(s, volume), "job": describe_job(job)}
    svc.wake_jobs()
    return result


@volumes.post("/{volume_id}/extend", status_code=202)
def extend_volume(
    volume_id: str,
    body: VolumeExtendBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    room = _room_of(svc, who, volume_id)
    with svc.db.write() as s:
        volume = service.get_volume(s, volume_id, who, "operate", lock=True)
        job = service.extend_volume(s, svc.jobs, volume, body.size_bytes, room)
        result = {"volume": service.describe_volume(s, volume), "job": describe_job(job)}
    svc.wake_jobs()
    return result


@volumes.put("/{volume_id}/attachment", status_code=202)
def attach_volume(
    volume_id: str,
    body: AttachBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    volume, job = service.attach_volume(svc, who, volume_id, body.instance, body.device)
    svc.wake_jobs()
    return {"volume": volume, "job": describe_job(job)}


@volumes.delete("/{volume_id}/attachment", status_code=202)
def detach_volume(
    volume_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.write() as s:
        volume = service.get_volume(s, volume_id, who, "operate", lock=True)
        job = service.detach_volume(s, svc.jobs, volume)
        result = {"volume": service.describe_volume(s, volume), "job": describe_job(job)}
    svc.wake_jobs()
    return result


@snapshots.post("", status_code=202)
def create_snapshot(
    body: SnapshotCreateBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    room = _room_of(svc, who, body.volume)
    with svc.db.write() as s:
        volume = service.get_volume(s, body.volume, who, "operate", lock=True)
        snapshot, job = service.create_snapshot(s, svc.jobs, who, volume, body.comment, room)
        result = {"snapshot": service.describe_snapshot(s, snapshot), "job": describe_job(job)}
    svc.wake_jobs()
    return result


@snapshots.get("")
def describe_snapshots(
    snapshot_id: list[str] | None = Query(None, alias="id"),
    status: str | None = _status_filter(SNAPSHOT_STATUSES),
    volume: str | None = None,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    with svc.db.read() as s:
        found = service.list_snapshots(s, who, ids=snapshot_id, status=status, volume=volume)
        return {"snapshots": [service.describe_snapshot(s, x) for x in found]}


@snapshots.get("/{snapshot_id}")
def show_snapshot(
    snapshot_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.read() as s:
        snapshot = service.get_snapshot(s, snapshot_id, who)
        return {"snapshot": service.describe_snapshot(s, snapshot)}


@snapshots.delete("/{snapshot_id}", status_code=202)
def delete_snapshot(
    snapshot_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    with svc.db.write() as s:
        snapshot = service.get_snapshot(s, snapshot_id, who, "own", lock=True)
        job = service.delete_snapshot(s, svc.jobs, snapshot)
        result = {"snapshot": service.describe_snapshot(s, snapshot), "job": describe_job(job)}
    svc.wake_jobs()
    return result
