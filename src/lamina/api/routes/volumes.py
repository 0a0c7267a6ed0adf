"""``/volumes`` and ``/snapshots``: a thin layer over ``lamina.volumes.service``; who may do
what and which state allows it is decided there. Long work answers 202 with its job.

Every volume or snapshot in a path or body is its id or its name (``lamina.db.refs.pick_named``:
the caller's own of that name first; several: ``400 ambiguous_name``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.identity.principal import Principal
from lamina.jobs.views import describe_job
from lamina.services import Services
from lamina.volumes import service
from lamina.volumes.models import SNAPSHOT_STATUSES, VOLUME_STATUSES

volumes = APIRouter(prefix="/volumes", tags=["volumes"])
snapshots = APIRouter(prefix="/snapshots", tags=["volumes"])
#: What the database holds; the real limit is ``volumes.max_size_bytes`` (413 past it).
MAX_SIZE = 2**63 - 1
#: An id (``vol-…``, ``snap-…``) or a name (a DNS label, ``volumes.service.check_name``).
REF = 63


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VolumeCreateBody(Body):
    name: str | None = Field(None, min_length=1, max_length=REF)
    size_bytes: int | None = Field(None, gt=0, le=MAX_SIZE)
    snapshot: str | None = Field(None, min_length=1, max_length=REF)
    comment: str = Field("", max_length=1024)
    host: str | None = None
    clone: bool = True


class VolumeExtendBody(Body):
    size_bytes: int = Field(gt=0, le=MAX_SIZE)


class AttachBody(Body):
    instance: str = Field(min_length=1, max_length=63)
    device: str | None = Field(None, pattern=r"^vd[b-z]$")


class SnapshotCreateBody(Body):
    volume: str = Field(min_length=1, max_length=REF)
    name: str | None = Field(None, min_length=1, max_length=REF)
    comment: str = Field("", max_length=1024)


def _status_filter(statuses: tuple[str, ...]) -> Any:
    return Query(None, pattern="^(" + "|".join(statuses) + ")$")


@volumes.post("", status_code=202)
def create_volume(
    body: VolumeCreateBody, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    volume, job = service.create_volume(
        svc,
        who,
        size_bytes=body.size_bytes,
        snapshot=body.snapshot,
        comment=body.comment,
        host=body.host,
        clone=body.clone,
        name=body.name,
    )
    return {"volume": volume, "job": describe_job(job)}


@volumes.get("")
def describe_volumes(
    volume_id: list[str] | None = Query(None, alias="id"),
    status: str | None = _status_filter(VOLUME_STATUSES),
    instance: str | None = None,
    name: str | None = None,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """The caller's volumes (every volume, for admins), oldest first; ``id`` (an id or a
    name) may repeat."""
    found = service.list_volumes(
        svc, who, ids=volume_id, status=status, instance=instance, name=name
    )
    return {"volumes": found}


@volumes.get("/{volume_id}")
def show_volume(
    volume_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return {"volume": service.show_volume(svc, who, volume_id)}


@volumes.delete("/{volume_id}", status_code=202)
def delete_volume(
    volume_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    volume, job = service.delete_volume(svc, who, volume_id)
    return {"volume": volume, "job": describe_job(job)}


@volumes.post("/{volume_id}/extend", status_code=202)
def extend_volume(
    volume_id: str,
    body: VolumeExtendBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    volume, job = service.extend_volume(svc, who, volume_id, body.size_bytes)
    return {"volume": volume, "job": describe_job(job)}


@volumes.put("/{volume_id}/attachment", status_code=202)
def attach_volume(
    volume_id: str,
    body: AttachBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    volume, job = service.attach_volume(svc, who, volume_id, body.instance, body.device)
    return {"volume": volume, "job": describe_job(job)}


@volumes.delete("/{volume_id}/attachment", status_code=202)
def detach_volume(
    volume_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    volume, job = service.detach_volume(svc, who, volume_id)
    return {"volume": volume, "job": describe_job(job)}


@snapshots.post("", status_code=202)
def create_snapshot(
    body: SnapshotCreateBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    snapshot, job = service.create_snapshot(svc, who, body.volume, body.comment, body.name)
    return {"snapshot": snapshot, "job": describe_job(job)}


@snapshots.get("")
def describe_snapshots(
    snapshot_id: list[str] | None = Query(None, alias="id"),
    status: str | None = _status_filter(SNAPSHOT_STATUSES),
    volume: str | None = None,
    name: str | None = None,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """The caller's snapshots (every snapshot, for admins), oldest first; ``id`` (an id or a
    name) may repeat; ``volume``: a volume's id or name."""
    found = service.list_snapshots(
        svc, who, ids=snapshot_id, status=status, volume=volume, name=name
    )
    return {"snapshots": found}


@snapshots.get("/{snapshot_id}")
def show_snapshot(
    snapshot_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return {"snapshot": service.show_snapshot(svc, who, snapshot_id)}


@snapshots.delete("/{snapshot_id}", status_code=202)
def delete_snapshot(
    snapshot_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    snapshot, job = service.delete_snapshot(svc, who, snapshot_id)
    return {"snapshot": snapshot, "job": describe_job(job)}
