"""``/jobs``: read persisted jobs and their step logs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.identity.principal import Principal
from lamina.jobs.models import JOB_STATUSES
from lamina.jobs.service import get_job, list_jobs, stuck_jobs
from lamina.jobs.views import describe_job
from lamina.services import Services

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("")
def jobs(
    status: str | None = Query(None, pattern="^(" + "|".join(JOB_STATUSES) + ")$"),
    target: str | None = None,
    stuck: bool = False,
    limit: int = Query(100, ge=1, le=1000),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    with svc.db.read() as s:
        if stuck:
            found = stuck_jobs(s, svc.settings.jobs.stuck_fraction, who)
            return {"jobs": [describe_job(j, viewer=who) for j in found]}
        found = list_jobs(s, status=status, target_id=target, limit=limit, who=who)
        return {"jobs": [describe_job(j, steps=False, viewer=who) for j in found]}


@router.get("/{job_id}")
def job(
    job_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    with svc.db.read() as s:
        return {"job": describe_job(get_job(s, job_id, who, svc.jobs), viewer=who)}
