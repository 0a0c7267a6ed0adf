"""``/instances/{ref}/checkpoints`` and ``/checkpoints``: a thin layer over the compute
domain's checkpoint use cases (``lamina.compute.checkpoints``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.compute import checkpoints as usecases
from lamina.identity.principal import Principal
from lamina.services import Services

instance_checkpoints = APIRouter(prefix="/instances", tags=["checkpoints"])
checkpoints = APIRouter(prefix="/checkpoints", tags=["checkpoints"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckpointCreate(Body):
    name: str | None = Field(None, max_length=63, description="Default: c-<UTC date-time>")


class CheckpointRestore(Body):
    host: str | None = Field(None, max_length=255, description="Default: the instance's host")


@checkpoints.get("")
def list_all(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    """The checkpoints of every instance the caller may see; oldest first."""
    return usecases.list_checkpoints(svc, who)


@instance_checkpoints.get("/{ref}/checkpoints")
def list_checkpoints(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return usecases.list_checkpoints(svc, who, ref)


@instance_checkpoints.post("/{ref}/checkpoints", status_code=202)
def create_checkpoint(
    ref: str,
    body: CheckpointCreate,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Save the running or paused layered instance's memory, instance layer and config disk
    together; it runs on as before."""
    return usecases.create_checkpoint(svc, who, ref, body.name)


@instance_checkpoints.get("/{ref}/checkpoints/{name}")
def show_checkpoint(
    ref: str, name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return usecases.show_checkpoint(svc, who, ref, name)


@instance_checkpoints.delete("/{ref}/checkpoints/{name}", status_code=202)
def delete_checkpoint(
    ref: str, name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    return usecases.delete_checkpoint(svc, who, ref, name)


@instance_checkpoints.post("/{ref}/checkpoints/{name}/restore", status_code=202)
def restore_checkpoint(
    ref: str,
    name: str,
    body: CheckpointRestore,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Replace what the instance runs by the checkpoint, on its host or ``host``; refused
    (409 ``incompatible``) on a host that cannot run it, before anything is touched."""
    return usecases.restore_checkpoint(svc, who, ref, name, body.host)
