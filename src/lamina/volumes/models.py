"""Volumes, snapshots and attachments as stored (VBS section 5.2's three tables).

The constraints carry the rules no race may break: an attachment's ``volume_id`` is unique
(a volume is attached to at most one instance) and so is its ``(instance_id, device)`` (one
volume per device of an instance). Two concurrent attaches of one volume cannot both insert
their row, whatever the isolation level.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from lamina.db.types import Base, UTCDateTime, utcnow

VOLUME_STATUSES = (
    "creating",
    "available",
    "attaching",
    "in-use",
    "detaching",
    "extending",
    "deleting",
    "error",
)
SNAPSHOT_STATUSES = ("pending", "completed", "error", "deleting")
ATTACHMENT_STATUSES = ("attaching", "attached", "detaching")


def volume_id() -> str:
    return f"vol-{secrets.token_hex(8)}"


def snapshot_id() -> str:
    return f"snap-{secrets.token_hex(8)}"


class Volume(Base):
    __tablename__ = "volumes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=volume_id)
    #: Optional, as Cinder's; not unique (``lamina.db.refs.pick_named`` resolves a name).
    name: Mapped[str | None] = mapped_column(String(63), index=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="creating", index=True)
    #: The volume server: the host whose agent keeps the volume's bytes and exports them.
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), index=True)
    #: The agent's backend (``qcow2``, ``raw``, ...) and what its exports carry.
    backend: Mapped[str | None] = mapped_column(String(32))
    export_format: Mapped[str | None] = mapped_column(String(16))
    #: The snapshot it was made from, and the one it still depends on if it is a
    #: copy-on-write clone (that snapshot cannot be deleted while the volume lives).
    snapshot_id: Mapped[str | None] = mapped_column(String(40), index=True)
    cloned_from: Mapped[str | None] = mapped_column(String(40), index=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    #: Volumes are never public: ``lamina.identity.access`` sees owners, grantees, admins.
    visibility = "private"


class Snapshot(Base):
    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=snapshot_id)
    name: Mapped[str | None] = mapped_column(String(63), index=True)
    #: A plain id, no foreign key: a snapshot outlives its volume.
    volume_id: Mapped[str] = mapped_column(String(40), index=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), index=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    visibility = "private"


class Attachment(Base):
    __tablename__ = "attachments"
    __table_args__ = (UniqueConstraint("instance_id", "device", name="uq_attachments_device"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    volume_id: Mapped[str] = mapped_column(
        ForeignKey("volumes.id", ondelete="CASCADE"), unique=True
    )
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    #: The guest's disk target, ``vd[b-z]``.
    device: Mapped[str] = mapped_column(String(8))
    #: Where the volume server exports it (set by the attach job's ``export`` step).
    iqn: Mapped[str | None] = mapped_column(String(223))
    lun: Mapped[int | None] = mapped_column(Integer)
    portal: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="attaching")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
