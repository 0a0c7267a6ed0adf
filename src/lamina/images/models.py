"""Images (VISOR table 4.1) and their history, as stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lamina.db.types import Base, UTCDateTime, new_id, utcnow

STATUSES = ("locked", "uploading", "available", "error")
TYPES = ("kernel", "ramdisk", "machine", "layer")
FORMATS = (
    "iso",
    "raw",
    "qcow2",
    "vmdk",
    "vdi",
    "vhd",
    "ami",
    "aki",
    "ari",
    "squashfs",
    "erofs",
    "tar",
    "ova",
)
ARCHITECTURES = ("i386", "x86_64", "aarch64", "armv7l", "ppc64le", "s390x", "riscv64")
ACCESS = ("public", "private")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (Index("ix_images_created_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), index=True)
    architecture: Mapped[str | None] = mapped_column(String(16))
    #: public or private (VISOR's name for what instances call visibility).
    access: Mapped[str] = mapped_column(String(16), default="private", index=True)
    status: Mapped[str] = mapped_column(String(16), default="locked", index=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    type: Mapped[str | None] = mapped_column(String(16))
    format: Mapped[str | None] = mapped_column(String(16))
    store: Mapped[str] = mapped_column(String(16), default="file")
    location: Mapped[str | None] = mapped_column(Text)
    kernel: Mapped[str | None] = mapped_column(String(36))
    ramdisk: Mapped[str | None] = mapped_column(String(36))
    #: The owning user's id.
    owner: Mapped[str | None] = mapped_column(String(36), index=True)
    #: MD5 (VISOR's checksum) and SHA-256 of the file, computed while it streamed in.
    checksum: Mapped[str | None] = mapped_column(String(32))
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    #: Attributes beyond VISOR's (its ``others``), filterable like the rest.
    others: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    #: Who is writing the file now (``runner id`` of a manager process), and when it last
    #: made progress: an upload whose writer died is turned to ``error``.
    upload_by: Mapped[str | None] = mapped_column(String(96))
    upload_seen: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: What a resumable upload declared it would send.
    upload_size: Mapped[int | None] = mapped_column(BigInteger)
    upload_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    uploaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    accessed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    access_count: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def visibility(self) -> str:
        """``access``, under the name identity.access's checks use."""
        return self.access


class ImageEvent(Base):
    """One operation in an image's history (VISOR's tracking, section 4.2.6)."""

    __tablename__ = "image_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    user_id: Mapped[str | None] = mapped_column(String(36))
    access_key: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
