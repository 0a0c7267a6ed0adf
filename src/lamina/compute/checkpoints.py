"""Checkpoints: a layered instance's memory, instance layer and config disk saved together
(``/instances/{ref}/checkpoints``), and the instance restored from one, on its host or
another.

A checkpoint is taken with the guest paused only while its memory is written and its disks
are copied (``lamina.agent.checkpoints``); it then runs on as before. Its files become
private images of the repository owned by the instance's owner, in the default store, so any
host can fetch them. It records what a restore needs of a host (``SavedRequirements``: the
hypervisor, QEMU version, machine type, CPU model, architecture) and what the guest ran (its
read-only layers, kernel and initrd): a restore on a host that cannot run it is refused with
the reasons (409 ``incompatible``) before anything is touched.

The jobs are in ``lamina.compute.checkpoint_jobs``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.compute import instances as instance_service
from lamina.compute.hosts import get_host
from lamina.compute.models import Checkpoint, Host, Instance
from lamina.compute.scheduler import place
from lamina.db.types import new_id, utcnow
from lamina.errors import Conflict, Incompatible, InvalidRequest, InvalidState, NotFound
from lamina.identity.principal import Principal
from lamina.images.models import Image
from lamina.jobs.service import submit
from lamina.jobs.views import describe_job
from lamina.wire.protocol import ServerInfo

if TYPE_CHECKING:
    from lamina.services import Services

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
#: The instance statuses a checkpoint may be taken in (it needs a guest with memory).
SAVABLE = ("running", "paused")
#: The instance statuses a checkpoint may be restored over.
RESTORABLE = ("running", "paused", "stopped", "error")
#: The files of a checkpoint, each an image: the memory and the instance's own disks.
ROLES = ("memory", "upper", "config")


def checkpoint_name(now: Any = None) -> str:
    """The name a checkpoint gets when none is asked for: ``c-<UTC date and time>``."""
    return (now or utcnow()).strftime("c-%Y%m%d-%H%M%S")


def get_checkpoint(session: Session, instance: Instance, ref: str) -> Checkpoint:
    """The checkpoint ``ref`` (name or id) of ``instance``; NotFound otherwise."""
    found = session.scalars(
        select(Checkpoint).where(
            Checkpoint.instance_id == instance.id,
            (Checkpoint.name == ref) | (Checkpoint.id == ref),
        )
    ).first()
    if found is None:
        raise NotFound(f"instance {instance.name} has no checkpoint {ref!r}", checkpoint=ref)
    return found


def describe(checkpoint: Checkpoint, instance: Instance | None = None) -> dict[str, Any]:
    """A checkpoint as the API shows it."""
    return {
        "id": checkpoint.id,
        "name": checkpoint.name,
        "instance": checkpoint.instance_id,
        "instance_name": instance.name if instance is not None else None,
        "status": checkpoint.status,
        "host_id": checkpoint.host_id,
        "size": checkpoint.size_bytes,
        "images": checkpoint.images or {},
        "requires": checkpoint.requires or {},
        "paused_seconds": checkpoint.paused_seconds,
        "job_id": checkpoint.job_id,
        "error": checkpoint.error,
        "created_at": checkpoint.created_at,
    }


# -- what a restore needs -------------------------------------------------------------------


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def incompatibilities(requires: dict[str, Any], host: str, info: ServerInfo) -> list[str]:
    """Why a guest saved with ``requires`` (``SavedRequirements``) cannot be restored on the
    host ``host`` that answered ``info``; empty if it can."""
    reasons = []
    saved_type = requires.get("domain_type")
    if saved_type and saved_type != info.domain_type:
        reasons.append(
            f"it was saved under {saved_type}; host {host} runs {info.domain_type} guests"
        )
    arch = requires.get("arch")
    if arch and info.arch and arch != info.arch:
        reasons.append(f"it needs a {arch} host; host {host} is {info.arch}")
    qemu = requires.get("qemu_version")
    if qemu:
        if not info.qemu_version:
            reasons.append(f"it needs QEMU {qemu} or newer; host {host} does not tell its QEMU")
        elif _version(info.qemu_version) < _version(qemu):
            reasons.append(
                f"it was saved by QEMU {qemu}; host {host} runs QEMU {info.qemu_version}, "
                "which cannot read a newer QEMU's state"
            )
    machine = requires.get("machine")
    if machine and machine not in info.machine_types:
        reasons.append(f"it needs machine type {machine}; host {host} has no such machine type")
    if requires.get("cpu_mode") in ("host-passthrough", "host-model"):
        model = requires.get("cpu_model")
        if model and model != info.cpu_model:
            reasons.append(
                f"it ran on the host's own CPU ({model}); host {host}'s CPU is {info.cpu_model}"
            )
    return reasons


# -- the use cases --------------------------------------------------------------------------


def create_checkpoint(
    svc: Services, who: Principal, ref: str, name: str | None = None
) -> dict[str, Any]:
    """Queue a checkpoint of the running or paused layered instance ``ref``: ``{"checkpoint",
    "job"}``. InvalidRequest for a bad name; Conflict for a traditional instance or a name
    it has already; InvalidState unless it runs or is paused, or while another job works on
    it; ``operate`` access."""
    name = name or checkpoint_name()
    if not NAME.match(name):
        raise InvalidRequest(
            f"checkpoint name {name!r} must be 1-63 lower-case letters, digits, '.', '_' or '-'"
        )
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        if instance.layers is None:
            raise Conflict(
                f"instance {instance.name} is not a layered instance; only those have "
                "checkpoints (their state is their instance layer and config disk)",
                instance=instance.id,
            )
        _ensure_idle(s, instance)
        if instance.status not in SAVABLE:
            raise InvalidState(
                f"cannot checkpoint instance {instance.name}: it is {instance.status} "
                "(a checkpoint saves a running or paused guest's memory)",
                status=instance.status,
            )
        taken = select(Checkpoint.id).where(
            Checkpoint.instance_id == instance.id, Checkpoint.name == name
        )
        if s.scalar(taken):
            raise Conflict(f"instance {instance.name} has a checkpoint {name} already")
        checkpoint = Checkpoint(
            id=new_id(),
            name=name,
            instance_id=instance.id,
            owner=instance.owner,
            status="saving",
            host_id=instance.host_id,
            images={},
            files={},
            requires={},
            boot={},
            size_bytes=0,
        )
        s.add(checkpoint)
        s.flush()
        job = submit(
            s,
            svc.jobs.get("checkpoint.create"),
            {"instance_id": instance.id, "checkpoint_id": checkpoint.id},
            target_type="instance",
            target_id=instance.id,
            owner=who.user_id,
        )
        checkpoint.job_id = job.id
        answer = {"checkpoint": describe(checkpoint, instance), "job": describe_job(job)}
    svc.wake_jobs()
    return answer


def list_checkpoints(svc: Services, who: Principal, ref: str | None = None) -> dict[str, Any]:
    """The checkpoints of instance ``ref``, or of every instance ``who`` may see; oldest
    first."""
    with svc.db.read() as s:
        if ref is not None:
            instances = [instance_service.get_instance(s, ref, who)]
        else:
            instances = instance_service.list_instances(s, who=who)
        by_id = {i.id: i for i in instances}
        if not by_id:
            return {"checkpoints": []}
        found = s.scalars(
            select(Checkpoint)
            .where(Checkpoint.instance_id.in_(list(by_id)))
            .order_by(Checkpoint.created_at, Checkpoint.id)
        )
        return {"checkpoints": [describe(c, by_id[c.instance_id]) for c in found]}


def show_checkpoint(svc: Services, who: Principal, ref: str, name: str) -> dict[str, Any]:
    with svc.db.read() as s:
        instance = instance_service.get_instance(s, ref, who)
        return {"checkpoint": describe(get_checkpoint(s, instance, name), instance)}


def delete_checkpoint(svc: Services, who: Principal, ref: str, name: str) -> dict[str, Any]:
    """Queue the removal of a checkpoint and its images; owners only. InvalidState while it
    is being saved or another job works on its instance."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "own")
        checkpoint = get_checkpoint(s, instance, name)
        _ensure_idle(s, instance)
        if checkpoint.status not in ("available", "error"):
            raise InvalidState(
                f"checkpoint {checkpoint.name} is {checkpoint.status}", status=checkpoint.status
            )
        checkpoint.status = "deleting"
        job = submit(
            s,
            svc.jobs.get("checkpoint.delete"),
            {"instance_id": instance.id, "checkpoint_id": checkpoint.id},
            target_type="instance",
            target_id=instance.id,
            owner=who.user_id,
        )
        answer = {"checkpoint": describe(checkpoint, instance), "job": describe_job(job)}
    svc.wake_jobs()
    return answer


def restore_checkpoint(
    svc: Services, who: Principal, ref: str, name: str, host: str | None = None
) -> dict[str, Any]:
    """Queue the restore of instance ``ref`` from its checkpoint ``name``, on its host or
    on ``host``: ``{"checkpoint", "job"}``. What runs now is replaced. Refused before
    anything is touched: InvalidState for an instance or checkpoint in the wrong state,
    NoCapacity for a host without room (or not up), ``Incompatible`` (409, the reasons in
    the message and ``details.reasons``) for a host that cannot run the saved guest,
    InvalidState when a file it needs has left the repository; ``operate`` access."""
    with svc.db.write() as s:  # write: placement locks the host's row
        instance = instance_service.get_instance(s, ref, who, "operate")
        checkpoint = get_checkpoint(s, instance, name)
        _check_restorable(s, instance, checkpoint)
        target = _target(s, svc, instance, host)
        target_name = target.name
        agent = svc.agents.for_host(target)
    # Asked outside any transaction: the host says what it runs now.
    info = agent.info()
    reasons = incompatibilities(checkpoint.requires or {}, target_name, info)
    if reasons:
        raise Incompatible(
            f"checkpoint {checkpoint.name} of {instance.name} cannot be restored on host "
            f"{target_name}: " + "; ".join(reasons),
            checkpoint=checkpoint.id,
            host=target_name,
            reasons=reasons,
        )
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        checkpoint = get_checkpoint(s, instance, name)
        _check_restorable(s, instance, checkpoint)
        target = _target(s, svc, instance, host)
        job = submit(
            s,
            svc.jobs.get("checkpoint.restore"),
            {
                "instance_id": instance.id,
                "checkpoint_id": checkpoint.id,
                "host_id": target.id,
                "source_host_id": instance.host_id,
            },
            target_type="instance",
            target_id=instance.id,
            owner=who.user_id,
        )
        answer = {"checkpoint": describe(checkpoint, instance), "job": describe_job(job)}
    svc.wake_jobs()
    return answer


def _ensure_idle(session: Session, instance: Instance) -> None:
    job = instance_service.busy_job(session, instance.id)
    if job is not None:
        raise InvalidState(
            f"instance {instance.name!r} has a {job.kind} job in progress ({job.id})",
            job=job.id,
        )


def _check_restorable(session: Session, instance: Instance, checkpoint: Checkpoint) -> None:
    _ensure_idle(session, instance)
    if checkpoint.status != "available":
        raise InvalidState(
            f"checkpoint {checkpoint.name} is {checkpoint.status}", status=checkpoint.status
        )
    if instance.status not in RESTORABLE:
        raise InvalidState(
            f"cannot restore instance {instance.name}: it is {instance.status}",
            status=instance.status,
        )
    needed = list((checkpoint.images or {}).values())
    needed += [x["image"] for x in (checkpoint.boot or {}).get("layers", []) if x.get("image")]
    available = set(
        session.scalars(select(Image.id).where(Image.id.in_(needed), Image.status == "available"))
    )
    gone = sorted(set(needed) - available)
    if gone:
        raise InvalidState(
            f"checkpoint {checkpoint.name} needs images no longer available: {', '.join(gone)}",
            images=gone,
        )


def _target(session: Session, svc: Services, instance: Instance, host: str | None) -> Host:
    """The host to restore on: the instance's own, or ``host`` if it has room."""
    current = session.get(Host, instance.host_id) if instance.host_id else None
    if host is None or (current is not None and host in (current.id, current.name)):
        if current is None:
            raise InvalidState(f"instance {instance.name} has no host; name one with --host")
        if current.status != "up":
            raise InvalidState(
                f"the host of instance {instance.name}, {current.name}, is {current.status}",
                host=current.name,
            )
        return current
    get_host(session, host)  # NotFound for an unknown host
    return place(session, svc.settings.compute, instance.vcpus, instance.memory_mib, host)
