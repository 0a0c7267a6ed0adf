"""Subscribed channels, as stored: the pinned key and the last verified feed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lamina.db.types import Base, UTCDateTime, new_id, utcnow


class Channel(Base):
    __tablename__ = "channels"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    #: The feed's URL (``.../channel.rss``); its signature is ``<url>.sig``.
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    #: The pinned public key token, ``ed25519:<base64>``, and its fingerprint.
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(80))
    title: Mapped[str] = mapped_column(Text, default="")
    #: The feed's validators, sent back on refresh (If-None-Match, If-Modified-Since).
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    #: The last feed that passed verification, as fetched (parsed again when read).
    feed: Mapped[bytes] = mapped_column(LargeBinary)
    refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: The subscribing user's id.
    owner: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
