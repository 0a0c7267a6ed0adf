"""Hosts and instances as stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from lamina.db.types import Base, UTCDateTime, new_id, utcnow

HOST_STATUSES = ("pending", "up", "down")
INSTANCE_STATUSES = ("building", "running", "paused", "stopped", "error", "deleting", "deleted")
#: The statuses of an instance that still exists (holds its name, counts against quotas).
LIVE = INSTANCE_STATUSES[:-1]


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    #: host:port where the agent listens (mutual TLS).
    address: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    reserved_memory_mib: Mapped[int] = mapped_column(Integer, default=128)
    disk_free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    disk_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    domain_type: Mapped[str | None] = mapped_column(String(16))
    agent_version: Mapped[str | None] = mapped_column(String(32))
    #: The underlay address the agent says other hosts reach its VXLAN tunnels at (its
    #: ``tunnel_address`` setting); None: the host part of ``address``.
    tunnel_address: Mapped[str | None] = mapped_column(String(45))
    token_hash: Mapped[str | None] = mapped_column(String(64))
    token_expires: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cert_fingerprint: Mapped[str | None] = mapped_column(String(64))
    enrolled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: Set while an administrator keeps new instances off the host (``lamina host disable``):
    #: it runs what it runs and answers heartbeats, but the scheduler never chooses it.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


class Instance(Base):
    __tablename__ = "instances"
    #: Listings page in (created_at, id) order.
    __table_args__ = (Index("ix_instances_created_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), index=True)
    #: The owning user's id.
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    #: private: its owner, admins and grantees; public: every user, read-only.
    visibility: Mapped[str] = mapped_column(String(16), default="private", server_default="private")
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="building", index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    kernel: Mapped[str | None] = mapped_column(Text)
    initrd: Mapped[str | None] = mapped_column(Text)
    cmdline: Mapped[str] = mapped_column(Text, default="")
    disk_image: Mapped[str | None] = mapped_column(Text)
    disk_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: The installed appliance it was deployed from, if any.
    appliance_id: Mapped[str | None] = mapped_column(String(36), index=True)
    #: A layered instance's read-only layers, lowest first, as last booted:
    #: ``[{"image": id, "source": location, "sha256": digest}]``.
    layers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    #: Its instance variables (name -> value) and the template files they are rendered into.
    variables: Mapped[dict[str, str] | None] = mapped_column(JSON)
    templates: Mapped[list[str] | None] = mapped_column(JSON)
    #: Instances of one group share a round-robin A record on each of their networks
    #: (``<group>.<network>.<cloud domain>``); scaling groups set it.
    group_name: Mapped[str | None] = mapped_column(String(63), index=True)
    #: Configuration items (name -> value) the instance reads from the configuration service.
    config: Mapped[dict[str, str] | None] = mapped_column(JSON)
    #: The last status the instance reported about itself, and when.
    guest_status: Mapped[str | None] = mapped_column(Text)
    guest_status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def domain_name(self) -> str:
        """The hypervisor's name for this instance's guest."""
        return f"lamina-{self.id}"


CHECKPOINT_STATUSES = ("saving", "available", "restoring", "deleting", "error")


class Checkpoint(Base):
    """An instance's memory and instance-layer state saved together
    (``lamina.compute.checkpoints``): its files are images of the repository, owned by the
    instance's owner."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("instance_id", "name", name="uq_checkpoints_instance_name"),
        Index("ix_checkpoints_created_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="saving", index=True)
    #: The host it was taken on.
    host_id: Mapped[str | None] = mapped_column(String(36))
    #: The repository's images of its files: ``{"memory": id, "upper": id, "config": id}``,
    #: and their digests and sizes (``{"memory": {"sha256", "size"}, ...}``).
    images: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    files: Mapped[dict[str, dict[str, Any]]] = mapped_column(JSON, default=dict)
    #: What a restore needs of its host: ``lamina.wire.protocol.SavedRequirements``.
    requires: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: What the guest ran as it was saved: its read-only layers (as ``Instance.layers``), its
    #: kernel and initrd (source and digest), its command line and disks' order.
    boot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Seconds the guest was paused to take it.
    paused_seconds: Mapped[float | None] = mapped_column(Float)
    job_id: Mapped[str | None] = mapped_column(String(36))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
