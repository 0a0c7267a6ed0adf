"""Refreshes every subscribed channel's feed every ``channels.refresh_minutes`` (a
conditional GET: an unchanged feed costs one 304)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy import select

from lamina.channels.models import Channel
from lamina.channels.service import refresh
from lamina.errors import LaminaError

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)


class ChannelRefresher:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.interval = services.settings.channels.refresh_minutes * 60
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> None:
        """Refresh each channel; a failure is logged and kept as its ``last_error``."""
        with self.services.db.read() as s:
            ids = list(s.scalars(select(Channel.id)))
        for channel_id in ids:
            try:
                refresh(self.services, channel_id)
            except LaminaError as exc:
                log.warning("channel %s: refresh failed: %s", channel_id, exc.message)

    def start(self) -> None:
        """Start the thread, unless ``refresh_minutes`` is 0 (refresh on demand only)."""
        if self.interval <= 0:
            return
        self._thread = threading.Thread(target=self._loop, name="channel-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:
                log.exception("channel refresh failed")
