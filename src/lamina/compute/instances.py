"""Instances: create, act on, delete, read. Long work is handed to jobs."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from lamina.compute.boot import BootSources, check_boot
from lamina.compute.models import LIVE, Host, Instance
from lamina.compute.quota import check_instance_quota
from lamina.compute.scheduler import place
from lamina.config import ComputeSettings
from lamina.db.refs import pick_named
from lamina.errors import Conflict, Forbidden, InvalidRequest, InvalidState, NotFound
from lamina.identity.access import Need, check, may_see, shown_owner, visible_to
from lamina.identity.principal import Principal
from lamina.jobs.kinds import JobRegistry
from lamina.jobs.models import Job
from lamina.jobs.service import submit

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: action -> statuses it may start from
ACTIONS: dict[str, tuple[str, ...]] = {
    "start": ("stopped", "error"),
    "stop": ("running", "paused"),
    "pause": ("running",),
    "resume": ("paused",),
    "reboot": ("running",),
}
KIND = "instance"
VISIBILITIES = ("private", "public")


def check_name(name: str) -> None:
    """InvalidRequest unless ``name`` is a DNS label, as instance names are."""
    if not NAME.match(name):
        raise InvalidRequest(
            f"instance name {name!r} must be 1-63 lower-case letters, digits or '-', "
            "not starting or ending with '-'"
        )


def create_instance(
    session: Session,
    registry: JobRegistry,
    cfg: ComputeSettings,
    *,
    name: str,
    vcpus: int,
    memory_mib: int,
    boot: BootSources,
    cmdline: str = "",
    disk_size_bytes: int | None = None,
    host: str | None = None,
    visibility: str = "private",
    attach: Callable[[Session, Instance], None] | None = None,
    group: str | None = None,
    who: Principal,
) -> tuple[Instance, Job]:
    """Record an instance owned by ``who``, placed and within their quotas, and queue the
    job that builds it. ``boot``: its boot files, already checked for ``who``
    (``lamina.compute.boot.resolve_boot``, or an appliance's files). ``attach`` is called
    once the instance has its id, before its job is queued: what the caller gives it (its
    addresses: the lifecycle's ``attach_nics`` hook)."""
    check_name(name)
    check_boot(boot.kernel, boot.initrd, boot.disk_image)
    if visibility not in VISIBILITIES:
        raise InvalidRequest(f"visibility must be one of {', '.join(VISIBILITIES)}")
    if host and not who.is_admin:
        raise Forbidden("only administrators may choose the host")
    if group is not None and not NAME.match(group):
        raise InvalidRequest(f"group name {group!r} must be a DNS label like an instance name")
    owner = who.user_id
    check_instance_quota(session, owner, vcpus, memory_mib)
    taken = session.scalar(
        select(Instance.id).where(
            Instance.name == name, Instance.status.in_(LIVE), Instance.owner == owner
        )
    )
    if taken:
        raise Conflict(f"an instance named {name!r} already exists", instance=taken)
    target = place(session, cfg, vcpus, memory_mib, host, group=group, owner=owner)
    instance = Instance(
        name=name,
        owner=owner,
        visibility=visibility,
        host_id=target.id,
        status="building",
        vcpus=vcpus,
        memory_mib=memory_mib,
        kernel=boot.kernel and boot.kernel.location,
        initrd=boot.initrd and boot.initrd.location,
        cmdline=cmdline,
        disk_image=boot.disk_image and boot.disk_image.location,
        disk_size_bytes=disk_size_bytes,
        group_name=group,
    )
    session.add(instance)
    session.flush()
    if attach is not None:
        attach(session, instance)
    job = submit(
        session,
        registry.get("instance.create"),
        {"instance_id": instance.id},
        target_type="instance",
        target_id=instance.id,
        owner=owner,
    )
    return instance, job


def check_group(group: str | None, networks: Sequence[Any] | None) -> None:
    """A group is a round-robin name on each of its members' networks: an instance with no
    network (``networks`` given and empty) cannot be in one."""
    if group is not None and networks is not None and not networks:
        raise InvalidRequest(
            "an instance in a group needs a network: give networks, or no group",
            fields=[
                {"field": "group", "message": "needs a network"},
                {"field": "networks", "message": "empty, but a group is given"},
            ],
        )


def get_instance(session: Session, ref: str, who: Principal, need: Need = "read") -> Instance:
    """An instance by id or name, if ``who`` may see it (else 404) and do what ``need`` says
    (else 403). A name means the caller's own instance of that name first."""
    instance = session.get(Instance, ref)
    if instance is None or instance.status == "deleted":
        named = list(
            session.scalars(
                select(Instance).where(
                    Instance.name == ref,
                    Instance.status != "deleted",
                    visible_to(who, KIND, Instance.id, Instance.owner, Instance.visibility),
                )
            )
        )
        instance = pick_named("instance", ref, named, who.user_id)
    if instance is None or instance.status == "deleted":
        raise NotFound(f"instance {ref!r} does not exist", instance=ref)
    check(session, who, KIND, instance, need, ref)
    return instance


def list_instances(
    session: Session,
    *,
    status: str | None = None,
    host: str | None = None,
    limit: int | None = None,
    marker: str | None = None,
    include_deleted: bool = False,
    who: Principal | None = None,
) -> list[Instance]:
    """Instances ``who`` may see (all if None), oldest first (the brief listing,
    ``listing.brief_listing``, has the same filters and order)."""
    query = select(Instance).order_by(Instance.created_at, Instance.id)
    if who is not None:
        query = query.where(visible_to(who, KIND, Instance.id, Instance.owner, Instance.visibility))
    if status:
        query = query.where(Instance.status == status)
    elif not include_deleted:
        query = query.where(Instance.status != "deleted")
    if host:
        query = query.join(Host, Instance.host_id == Host.id).where(
            (Host.name == host) | (Host.id == host)
        )
    if marker:
        after = session.get(Instance, marker)
        if after is None or (who is not None and not may_see(session, who, after)):
            raise InvalidRequest(f"marker {marker!r} is not an instance id")
        query = query.where(
            tuple_(Instance.created_at, Instance.id) > tuple_(after.created_at, after.id)
        )
    if limit:
        query = query.limit(limit)
    return list(session.scalars(query))


def busy_job(session: Session, instance_id: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.target_id == instance_id, Job.status.in_(("queued", "running")))
    ).first()


def _ensure_idle(session: Session, instance: Instance) -> None:
    job = busy_job(session, instance.id)
    if job is not None:
        raise InvalidState(
            f"instance {instance.name!r} has a {job.kind} job in progress ({job.id})",
            job=job.id,
        )


def act(
    session: Session,
    registry: JobRegistry,
    instance: Instance,
    action: str,
    force: bool = False,
    requester: str | None = None,
) -> Job:
    """Queue a lifecycle action. ``force`` (stop only) powers off without asking the guest.
    The job belongs to ``requester`` (default: the instance's owner)."""
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    _ensure_idle(session, instance)
    if instance.status not in ACTIONS[action]:
        raise InvalidState(
            f"cannot {action} instance {instance.name!r}: it is {instance.status}",
            status=instance.status,
        )
    return submit(
        session,
        registry.get(f"instance.{action}"),
        {"instance_id": instance.id, "force": force and action == "stop"},
        target_type="instance",
        target_id=instance.id,
        owner=requester or instance.owner,
    )


def delete_instance(
    session: Session, registry: JobRegistry, instance: Instance, force: bool = False
) -> Job:
    """Queue the deletion. ``force`` deletes the record even when the instance's host cannot
    be reached (its guest is then reconciled away when the host returns)."""
    _ensure_idle(session, instance)
    if instance.status == "deleting":
        raise InvalidState(f"instance {instance.name!r} is already being deleted")
    instance.status = "deleting"
    return submit(
        session,
        registry.get("instance.delete"),
        {"instance_id": instance.id, "force": force},
        target_type="instance",
        target_id=instance.id,
        owner=instance.owner,
    )


def describe(
    instance: Instance,
    host: Host | None,
    nics: list[dict[str, Any]] | None = None,
    viewer: Principal | None = None,
    owner_name: str | None = None,
    more: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The instance as the API shows it (with its NICs when given). While its host is down
    its state is unknown: the last state Lamina saw is kept in ``last_status``. ``owner``
    is its owner's id and ``owner_name`` their access key, both shown only to whom may see
    whose it is; ``more``: the fields the other domains' views add (``appliance``,
    ``volumes``), which are otherwise empty."""
    owner = shown_owner(viewer, instance.owner)
    return {
        "id": instance.id,
        "name": instance.name,
        "status": _shown_status(instance.status, host),
        "last_status": instance.status,
        "host": host.name if host else None,
        "host_id": instance.host_id,
        "owner": owner,
        "owner_name": owner_name if owner else None,
        "visibility": instance.visibility,
        "vcpus": instance.vcpus,
        "memory_mib": instance.memory_mib,
        "kernel": instance.kernel,
        "initrd": instance.initrd,
        "cmdline": instance.cmdline,
        "disk_image": instance.disk_image,
        "disk_size_bytes": instance.disk_size_bytes,
        "appliance_id": instance.appliance_id,
        "appliance": None,
        "layers": instance.layers,
        "variables": instance.variables,
        "networks": nics if nics is not None else [],
        "volumes": [],
        "group": instance.group_name,
        "config": instance.config or {},
        "guest_status": instance.guest_status,
        "guest_status_at": instance.guest_status_at,
        "error": instance.error,
        "created_at": instance.created_at,
        "updated_at": instance.updated_at,
        "started_at": instance.started_at,
    } | (more or {})


def _shown_status(status: str, host: Host | None) -> str:
    if host is not None and host.status == "down" and status not in ("error", "deleted"):
        return "unknown"
    return status


#: Configuration item names: what a shell script can use as a variable name.
CONFIG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_CONFIG_VALUE = 4096


def update_config(instance: Instance, items: dict[str, str | None]) -> None:
    """Set or (``None``) remove configuration items; ``InvalidRequest`` naming every bad
    name or value."""
    problems = [
        f"{name!r}: not a name (letters, digits, _ . -)"
        for name in items
        if not CONFIG_NAME.match(name)
    ]
    problems += [
        f"{name!r}: its value is over {MAX_CONFIG_VALUE} characters or has control characters"
        for name, value in items.items()
        if value is not None and (len(value) > MAX_CONFIG_VALUE or not value.isprintable())
    ]
    if problems:
        raise InvalidRequest("bad configuration items: " + "; ".join(problems))
    config = dict(instance.config or {})
    for name, value in items.items():
        if value is None:
            config.pop(name, None)
        else:
            config[name] = value
    instance.config = config
