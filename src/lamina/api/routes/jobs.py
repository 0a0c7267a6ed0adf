"""``/jobs``: read persisted jobs and their step logs, a thin layer over
``lamina.jobs.queries``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from lamina.api.auth import principal
from lamina.api.deps import services
from lamina.identity.principal import Principal
from lamina.jobs import queries
from lamina.jobs.models import JOB_STATUSES
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
    found = queries.find_jobs(svc, who, status=status, target=target, stuck=stuck, limit=limit)
    return {"jobs": found}


@router.get("/{job_id}")
def job(
    job_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    return {"job": queries.show_job(svc, who, job_id)}
