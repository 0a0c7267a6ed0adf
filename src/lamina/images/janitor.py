"""Finds uploads that will never finish (their manager died or stalled) and turns them to
``error``, removing what they left in their store: at start and then every minute."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from lamina.images.service import recover_uploads
from lamina.jobs.runner import process_alive

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)
INTERVAL = 60.0


class UploadJanitor:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> list[str]:
        svc = self.services
        with svc.db.write() as s:
            cfg = svc.settings.images
            fixed = recover_uploads(
                s,
                svc.stores,
                process_alive,
                cfg.stale_upload_seconds,
                cfg.resumable_upload_hours * 3600,
                svc.settings.data_dir.resolve() / "uploads",
            )
        for image_id in fixed:
            log.warning("image %s: its upload was interrupted; marked error", image_id)
        return fixed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="upload-janitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception:
                log.exception("upload sweep failed")
            if self._stop.wait(INTERVAL):
                return
