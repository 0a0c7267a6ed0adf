"""Instances: the use cases a front end calls (``/instances``).

Each takes the container and the caller, runs its own transactions, checks who may do it
(``lamina.compute.instances.get_instance``), wakes the job runner when it queued a job and
returns what the API shows. The NICs an instance is given and shown come from the network,
which compute cannot import: through the lifecycle's hooks (``lamina.compute.lifecycle``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.compute import instances as instance_service
from lamina.compute.boot import resolve_boot
from lamina.compute.instances import KIND
from lamina.compute.lifecycle import NicRequest, lifecycle_of
from lamina.compute.listing import brief_listing
from lamina.compute.models import Host, Instance
from lamina.identity import access
from lamina.identity.principal import Principal
from lamina.identity.users import access_keys
from lamina.jobs.views import describe_job

if TYPE_CHECKING:
    from lamina.services import Services


def create_instance(
    svc: Services,
    who: Principal,
    *,
    name: str,
    vcpus: int = 1,
    memory_mib: int = 256,
    kernel: str | None = None,
    initrd: str | None = None,
    cmdline: str = "",
    disk_image: str | None = None,
    disk_size_mib: int | None = None,
    host: str | None = None,
    visibility: str = "private",
    networks: Sequence[NicRequest] | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """Record an instance owned by ``who`` and queue the job that builds it: ``{"instance",
    "job"}``. ``networks``: its NICs in order, the first the primary (None: one on the default
    network, if there is one ``who`` may use)."""
    instance_service.check_name(name)  # before the boot files are looked up
    instance_service.check_group(group, networks)
    attach = lifecycle_of(svc).attach(who, networks, svc.settings.network.default_network)
    with svc.db.write() as s:
        boot = resolve_boot(
            s, who, svc.settings, kernel=kernel, initrd=initrd, disk_image=disk_image
        )
        instance, job = instance_service.create_instance(
            s,
            svc.jobs,
            svc.settings.compute,
            name=name,
            vcpus=vcpus,
            memory_mib=memory_mib,
            boot=boot,
            cmdline=cmdline,
            disk_size_bytes=disk_size_mib * 1024 * 1024 if disk_size_mib else None,
            host=host,
            visibility=visibility,
            attach=attach,
            group=group,
            who=who,
        )
        result = {"instance": describe_instance(s, svc, instance, who), "job": describe_job(job)}
    svc.wake_jobs()
    return result


def list_brief(
    svc: Services,
    who: Principal,
    *,
    status: str | None = None,
    host: str | None = None,
    limit: int = 1000,
    marker: str | None = None,
) -> bytes:
    """The brief listing (id, name, status, host, vcpus, memory_mib; oldest first) as the
    JSON document the database builds."""
    with svc.db.read() as s:
        return brief_listing(s, who, status=status, host=host, limit=limit, marker=marker)


def list_detail(
    svc: Services,
    who: Principal,
    *,
    status: str | None = None,
    host: str | None = None,
    limit: int = 1000,
    marker: str | None = None,
) -> dict[str, Any]:
    """The full descriptions of the instances ``who`` may see, oldest first."""
    with svc.db.read() as s:
        by_id = {h.id: h for h in s.scalars(select(Host))}
        found = instance_service.list_instances(
            s, status=status, host=host, limit=limit, marker=marker, who=who
        )
        return {"instances": _describe_all(s, svc, found, who, by_id)}


def show_instance(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    with svc.db.read() as s:
        instance = instance_service.get_instance(s, ref, who)
        return {"instance": describe_instance(s, svc, instance, who)}


def set_visibility(svc: Services, who: Principal, ref: str, visibility: str) -> dict[str, Any]:
    """Make an instance public (read-only to every user) or private again; owners only."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "own")
        instance.visibility = visibility
        return {"instance": describe_instance(s, svc, instance, who)}


def update_config(
    svc: Services, who: Principal, ref: str, items: dict[str, str | None]
) -> dict[str, Any]:
    """Set (or, with None, remove) the instance's configuration items, which it reads from
    the configuration service; ``operate`` access."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        instance_service.update_config(instance, items)
        return {"config": instance.config or {}}


def delete_instance(svc: Services, who: Principal, ref: str, force: bool = False) -> dict[str, Any]:
    """Queue the instance's deletion; owners only."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "own")
        job = instance_service.delete_instance(s, svc.jobs, instance, force)
        result = {"job": describe_job(job)}
    svc.wake_jobs()
    return result


def console(svc: Services, who: Principal, ref: str, offset: int = 0) -> dict[str, Any]:
    """The guest's console from ``offset``. It can hold secrets a guest prints: it needs
    ``operate`` access. Its host is asked outside any transaction."""
    with svc.db.read() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        host = s.get(Host, instance.host_id)
        name = instance.domain_name
    if host is None:
        return {"console": {"data": "", "offset": offset}}
    chunk = svc.agents.for_host(host).console(name, offset)
    return {"console": chunk.model_dump()}


def list_grants(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    with svc.db.read() as s:
        instance = instance_service.get_instance(s, ref, who)
        found = access.grants(s, who, KIND, instance, ref)
        return {"grants": [_grant(g, user) for g, user in found]}


def share(
    svc: Services, who: Principal, ref: str, user: str, level: str = "read"
) -> dict[str, Any]:
    """Share a private instance with another user (Glance's image members): ``level`` is
    ``read`` or ``operate``."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who)
        grant = access.share(s, who, KIND, instance, ref, user, level)
        return {"grant": _grant(grant, user)}


def unshare(svc: Services, who: Principal, ref: str, user: str) -> dict[str, Any]:
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who)
        access.unshare(s, who, KIND, instance, ref, user)
        return {"revoked": {"user": user, "instance": instance.id}}


def act(
    svc: Services, who: Principal, ref: str, action: str, force: bool = False
) -> dict[str, Any]:
    """Queue ``action`` (start, stop, pause, resume, reboot); ``operate`` access."""
    with svc.db.write() as s:
        instance = instance_service.get_instance(s, ref, who, "operate")
        job = instance_service.act(s, svc.jobs, instance, action, force, who.user_id)
        result = {"job": describe_job(job)}
    svc.wake_jobs()
    return result


def describe_instance(
    s: Session, svc: Services, instance: Instance, who: Principal
) -> dict[str, Any]:
    """``instance`` as ``GET /instances/{ref}`` shows it to ``who``: with its NICs, its
    owner's access key and what the other domains' views add (appliance, volumes). For the
    use cases of the domains above compute that make instances (an appliance's deploy)."""
    host = s.get(Host, instance.host_id) if instance.host_id else None
    return _describe_all(s, svc, [instance], who, {host.id: host} if host else {})[0]


def _describe_all(
    s: Session,
    svc: Services,
    instances: Sequence[Instance],
    who: Principal,
    hosts: dict[str, Host],
) -> list[dict[str, Any]]:
    """Descriptions of ``instances`` with what the other domains add: NICs, the owner's
    access key, the appliance and attached volumes (the lifecycle's views)."""
    lifecycle = lifecycle_of(svc)
    ids = [i.id for i in instances]
    nics = lifecycle.nics_by_instance(s, ids, svc.settings.network.domain)
    owners = access_keys(s, (i.owner for i in instances))
    more = lifecycle.more_fields(s, instances, who)
    return [
        instance_service.describe(
            i,
            hosts.get(i.host_id or ""),
            nics.get(i.id, []),
            who,
            owner_name=owners.get(i.owner or ""),
            more=more.get(i.id),
        )
        for i in instances
    ]


def _grant(grant: Any, user: str) -> dict[str, Any]:
    return {"user": user, "access": grant.access, "created_at": grant.created_at}
