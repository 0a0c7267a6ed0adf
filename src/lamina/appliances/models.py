"""Installed appliances, as stored: the verified definition and the images of its files."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lamina.db.types import Base, UTCDateTime, new_id, utcnow

STATUSES = ("installing", "installed", "error")


class InstalledAppliance(Base):
    __tablename__ = "appliances"
    #: One record per name and version: two installs of one appliance cannot both go ahead.
    __table_args__ = (Index("ix_appliances_name_version", "name", "version", unique=True),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    channel_id: Mapped[str | None] = mapped_column(ForeignKey("channels.id"), index=True)
    #: The definition's bytes, as published and verified.
    definition: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="installing", index=True)
    error: Mapped[str | None] = mapped_column(Text)
    #: Ids of the images holding its files, in the order of ``Appliance.blobs()``.
    images: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: The job that installs it.
    job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
