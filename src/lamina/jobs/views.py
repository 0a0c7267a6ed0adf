"""Jobs as the API shows them."""

from __future__ import annotations

from typing import Any

from lamina.identity.access import shown_owner
from lamina.identity.principal import Principal
from lamina.jobs.models import Job


def rollback_state(job: Job) -> str | None:
    """``pending`` while undos wait for a host (retried by themselves), ``incomplete``
    when one failed for good, ``done`` when a failure was undone; None otherwise."""
    if job.undo_retry_at is not None and job.status == "failed":
        return "pending"
    statuses = {st.status for st in job.steps}
    if "undo_failed" in statuses:
        return "incomplete"
    if job.status == "rolled_back":
        return "done"
    return None


def describe_job(
    job: Job,
    *,
    steps: bool = True,
    viewer: Principal | None = None,
    target_name: str | None = None,
) -> dict[str, Any]:
    """The job; ``viewer`` (the owner of an instance a grantee acted on) is not told who the
    job's owner is unless it is them. ``target_name``: the target's name now (else the one
    recorded with the job)."""
    body: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "target_type": job.target_type,
        "target_id": job.target_id,
        "target_name": target_name or job.target_name,
        "owner": shown_owner(viewer, job.owner),
        "error": job.error,
        "rollback": rollback_state(job),
        "undo_retry_at": job.undo_retry_at,
        "progress": round(job.progress, 4),
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
        "rate": job.rate,
        # What a finished job has to tell beyond its status (a migration's figures, an
        # evacuation's report): its state's ``result``, if it set one.
        "result": (job.state or {}).get("result"),
        "runs": job.runs,
        "deadline": job.deadline,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }
    if steps:
        body["steps"] = [
            {
                "seq": st.seq,
                "name": st.name,
                "status": st.status,
                "attempts": st.attempts,
                "runner": st.runner,
                "message": st.message,
                "started_at": st.started_at,
                "finished_at": st.finished_at,
            }
            for st in job.steps
        ]
    return body
