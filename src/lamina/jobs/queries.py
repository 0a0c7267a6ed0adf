"""Jobs, the use cases a front end calls (the API's ``/jobs``, a web UI): the jobs a caller
may see, with their steps. Read-only; the engine that runs jobs is ``lamina.jobs.runner``.

Jobs sit below the manager's container (``lamina.services``), so these functions take any
object with what they use of it (``Container``): ``Services`` is one."""

from __future__ import annotations

from typing import Any, Protocol

from lamina.config import Settings
from lamina.db import Database
from lamina.identity.principal import Principal
from lamina.jobs.kinds import JobRegistry
from lamina.jobs.service import get_job, list_jobs, stuck_jobs
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
    target: str | None = None,
    stuck: bool = False,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The jobs ``who`` may see, newest first, by ``status`` and ``target`` (an id), without
    their steps; or, ``stuck``, the unfinished ones with less than ``jobs.stuck_fraction`` of
    their time left (or past their deadline), soonest due first, with them."""
    with svc.db.read() as s:
        if stuck:
            found = stuck_jobs(s, svc.settings.jobs.stuck_fraction, who)
            return [describe_job(j, viewer=who) for j in found]
        found = list_jobs(s, status=status, target_id=target, limit=limit, who=who)
        return [describe_job(j, steps=False, viewer=who) for j in found]


def show_job(svc: Container, who: Principal, job_id: str) -> dict[str, Any]:
    """One job ``who`` may see, with its steps."""
    with svc.db.read() as s:
        return describe_job(get_job(s, job_id, who, svc.jobs), viewer=who)
