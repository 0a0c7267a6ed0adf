"""Who may see the jobs on an instance: its owner (besides the job's owner and the
administrators). Registered with the job registry by the wiring (``lamina.manager``)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from lamina.compute.models import Instance
from lamina.identity.principal import Principal


def instance_jobs_visible(session: Session, instance_id: str, who: Principal) -> bool:
    """Whether ``who`` owns the instance ``instance_id`` (and may so see its jobs)."""
    target = session.get(Instance, instance_id)
    return target is not None and target.owner == who.user_id
