"""Jobs, the use cases a front end calls (the API's ``/jobs``, a web UI): the jobs a caller
may see, with their steps. Read-only; the engine that runs jobs is ``lamina.jobs.runner``.

Jobs sit below the manager's container (``lamina.services``), so these functions take any
object with what they use of it (``Container``): ``Services`` is one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from lamina.config import Settings
from lamina.db import Database
from lamina.db.refs import pick_named
from lamina.errors import InvalidRequest, NotFound
from lamina.identity.principal import Principal
from lamina.identity.users import access_keys
from lamina.jobs.kinds import JobRegistry
from lamina.jobs.models import Job
from lamina.jobs.service import get_job, list_jobs, stuck_jobs, visible_jobs
from lamina.jobs.views import describe_job


class Container(Protocol):
    """What the job queries need of the manager's container."""

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def jobs(self) -> JobRegistry: ...


def find_jobs(
    svc: Container,
    who: Principal,
    *,
    status: str | None = None,
    kind: str | None = None,
    target: str | None = None,
    stuck: bool = False,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The jobs ``who`` may see, newest first, at most ``limit``, by ``status``, ``kind`` and
    ``target`` (the id or the name of what the jobs are about: an instance, volume, network,
    appliance, host...), without their steps, each with its target's name; or, ``stuck``, the
    unfinished ones with less than ``jobs.stuck_fraction`` of their time left (or past their
    deadline), soonest due first, with them. InvalidRequest for a kind no job has;
    NotFound for a target no job is about; Ambiguous for a name several targets have."""
    if kind is not None and kind not in svc.jobs:
        raise InvalidRequest(
            f"no job kind {kind!r}; one of {', '.join(svc.jobs.kinds())}", field="kind"
        )
    with svc.db.read() as s:
        if stuck:
            found = stuck_jobs(s, svc.settings.jobs.stuck_fraction, who)
        else:
            target_id = _target_id(s, svc.jobs, who, target) if target else None
            found = list_jobs(
                s, status=status, kind=kind, target_id=target_id, limit=limit, who=who
            )
        names = svc.jobs.target_names(s, [(j.target_type, j.target_id) for j in found])
        shown = [
            describe_job(j, steps=stuck, viewer=who, target_name=names.get(j.target_id or ""))
            for j in found
        ]
        return _with_owner_keys(s, shown)


@dataclass(frozen=True)
class Target:
    """What some of the jobs a caller may see are about."""

    id: str
    type: str | None
    owner: str | None


def _target_id(session: Session, registry: JobRegistry, who: Principal, ref: str) -> str:
    """The id of the target ``ref`` names, among those of the jobs ``who`` may see: an id
    wins; else the targets called ``ref`` now (or, if none is, those that were called so when
    their jobs ran and are gone), one of them as ``lamina.db.refs.pick_named`` says."""
    visible = visible_jobs(who)
    by_id = visible.with_only_columns(Job.id).where(Job.target_id == ref).limit(1)
    if session.scalar(by_id) is not None:
        return ref
    columns = (Job.target_id, Job.target_type, Job.owner, Job.target_name)
    rows = session.execute(
        visible.with_only_columns(*columns)
        .where(Job.target_id.is_not(None))
        .where((Job.target_name == ref) | Job.target_name.is_(None))
        .distinct()
    ).all()
    targets: dict[str, tuple[Target, str | None]] = {}
    for target_id, target_type, owner, stored in rows:
        if target_id is None:
            continue
        known = targets.get(target_id)
        if known is None or (owner == who.user_id and known[0].owner != who.user_id):
            targets[target_id] = (Target(target_id, target_type, owner), stored)
    now = registry.target_names(session, [(t.type, t.id) for t, _ in targets.values()])
    current = [t for t, _ in targets.values() if now.get(t.id) == ref]
    gone = [t for t, stored in targets.values() if stored == ref and t.id not in now]
    found = pick_named("target", ref, current or gone, who.user_id)
    if found is None:
        raise NotFound(f"no job is about a target named {ref!r} or of that id", target=ref)
    return found.id


def show_job(svc: Container, who: Principal, job_id: str) -> dict[str, Any]:
    """One job ``who`` may see, with its steps and its target's name."""
    with svc.db.read() as s:
        job = get_job(s, job_id, who, svc.jobs)
        names = svc.jobs.target_names(s, [(job.target_type, job.target_id)])
        shown = describe_job(job, viewer=who, target_name=names.get(job.target_id or ""))
        return _with_owner_keys(s, [shown])[0]


def _with_owner_keys(session: Session, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each job with its owner's access key (``owner_key``) beside the owner's id, where the
    viewer is shown the owner at all."""
    keys = access_keys(session, (j["owner"] for j in jobs))
    for job in jobs:
        job["owner_key"] = keys.get(job["owner"] or "")
    return jobs
