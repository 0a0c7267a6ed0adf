"""``/jobs``: read persisted jobs and their step logs, a thin layer over
``lamina.jobs.queries``."""

from __future__ import annotations

from typing import Any, Literal

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
    status: Literal[JOB_STATUSES] | None = Query(None),  # type: ignore[valid-type]
    kind: str | None = Query(None, max_length=64, description="A job kind, e.g. instance.create"),
    target: str | None = Query(None, max_length=255, description="The target's id or name"),
    stuck: bool = False,
    limit: int = Query(100, ge=1, le=1000),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """The jobs the caller may see, newest first, each with its target's name."""
    found = queries.find_jobs(
        svc, who, status=status, kind=kind, target=target, stuck=stuck, limit=limit
    )
    return {"jobs": found}


@router.get("/{job_id}")
def job(
    job_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    return {"job": queries.show_job(svc, who, job_id)}
