"""Creating, reading and listing jobs (the runner executes them)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from lamina.db.types import utcnow
from lamina.errors import NotFound
from lamina.identity.principal import Principal
from lamina.jobs.kinds import JobKind, JobRegistry
from lamina.jobs.models import FINISHED, Job, JobStep


def submit(
    session: Session,
    kind: JobKind,
    params: dict[str, Any],
    *,
    target_type: str | None = None,
    target_id: str | None = None,
    target_name: str | None = None,
    owner: str | None = None,
    deadline: float | None = None,
) -> Job:
    """Record a queued job with its steps; a runner picks it up (and records the target's
    name, unless given here, through the registry's ``target_names``)."""
    now = utcnow()
    job = Job(
        kind=kind.name,
        status="queued",
        params=params,
        state={},
        target_type=target_type,
        target_id=target_id,
        target_name=target_name,
        owner=owner,
        created_at=now,
        deadline=now + timedelta(seconds=deadline or kind.deadline),
    )
    job.steps = [JobStep(seq=i, name=step.name) for i, step in enumerate(kind.steps)]
    session.add(job)
    session.flush()
    return job


def retry_pending_undos(session: Session) -> int:
    """Make every pending undo due now (a host came back up); answer how many jobs wait."""
    result = session.execute(
        update(Job)
        .where(Job.status == "failed", Job.undo_retry_at.is_not(None))
        .values(undo_retry_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


def get_job(
    session: Session,
    job_id: str,
    who: Principal | None = None,
    registry: JobRegistry | None = None,
) -> Job:
    """A job; members see those they started and those on resources they own, as the
    ``registry``'s visibility checks say (``who`` None: no check, for internal use)."""
    if who is not None and registry is None:
        raise TypeError("get_job needs the job registry to check who may see a job")
    job = session.get(Job, job_id)
    if job is None or (
        who is not None and registry is not None and not _may_see(session, job, who, registry)
    ):
        raise NotFound(f"job {job_id!r} does not exist", job=job_id)
    return job


def _may_see(session: Session, job: Job, who: Principal, registry: JobRegistry) -> bool:
    if who.is_admin or job.owner == who.user_id:
        return True
    return registry.target_visible(session, job.target_type, job.target_id, who)


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    kind: str | None = None,
    target_id: str | None = None,
    limit: int = 100,
    who: Principal | None = None,
) -> list[Job]:
    """The jobs ``who`` may list (members: their own), newest first."""
    query = visible_jobs(who).order_by(Job.created_at.desc(), Job.id).limit(limit)
    if status:
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    if target_id:
        query = query.where(Job.target_id == target_id)
    return list(session.scalars(query))


def visible_jobs(who: Principal | None) -> Select[Any]:
    """The jobs a listing shows ``who``: all to administrators (and internal callers), a
    member's own to a member."""
    query = select(Job)
    if who is not None and not who.is_admin:
        query = query.where(Job.owner == who.user_id)
    return query


def stuck_jobs(session: Session, fraction: float, who: Principal | None = None) -> list[Job]:
    """Unfinished jobs past their deadline or with less than ``fraction`` of their time left."""
    now = utcnow()
    query = select(Job).where(Job.status.not_in(FINISHED)).order_by(Job.deadline)
    if who is not None and not who.is_admin:
        query = query.where(Job.owner == who.user_id)
    jobs = session.scalars(query).all()
    stuck = []
    for job in jobs:
        total = (job.deadline - job.created_at).total_seconds()
        left = (job.deadline - now).total_seconds()
        if left <= total * fraction:
            stuck.append(job)
    return stuck
