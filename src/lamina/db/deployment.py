"""The deployment id: which Lamina made an object on a host.

Several Lamina deployments may share a host's libvirtd, tgtd and network (two test clouds, a
staging and a production manager). Every object an agent makes there (libvirt domains, tgt
targets, bridges) is tagged with the id of the deployment whose manager asked for it, and
reconcile and the agents touch only objects tagged with their own id.

The id is random, made once by the first manager to start on a database and stored there, so
every manager sharing the database has the same one. Managers send it to their agents on
every call (``X-Lamina-Deployment``, see ``lamina.agent.identity``). It lives with the
database it is stored in, not in a domain: the container of a manager process
(``lamina.services``) reads it, and compute, network and volumes all tag with it.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from lamina.db.engine import Database
from lamina.db.types import Base, UTCDateTime, utcnow


class Deployment(Base):
    """One row: this deployment's id."""

    __tablename__ = "deployment"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def new_deployment_id() -> str:
    """16 lower-case hex digits (64 random bits)."""
    return secrets.token_hex(8)


def deployment_id(db: Database) -> str:
    """This deployment's id, made on first use (two managers starting at once on one
    database agree: the second insert fails and it reads the first's)."""
    for _ in range(3):
        with db.read() as s:
            found = s.scalar(select(Deployment.id).order_by(Deployment.created_at).limit(1))
        if found:
            return found
        try:
            with db.write() as s:
                if s.scalar(select(Deployment.id).limit(1)) is None:
                    s.add(Deployment(id=new_deployment_id(), created_at=utcnow()))
        except IntegrityError:
            continue
    raise RuntimeError("could not read or make the deployment id")
