"""Heartbeats: the manager asks each enrolled agent for its status every few seconds, keeps
the host's capacity and usage current, notices guests whose state changed behind Lamina's
back, and marks a host down when it stops answering (its instances then read as unknown)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lamina.compute.hosts import record_heartbeat, record_silence
from lamina.compute.jobs import GUEST_STATES
from lamina.compute.lifecycle import lifecycle_of
from lamina.compute.models import Host, Instance
from lamina.db.types import utcnow
from lamina.errors import LaminaError
from lamina.jobs.models import Job
from lamina.jobs.service import retry_pending_undos

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)
SYNCED = ("running", "paused", "stopped")


class HostMonitor:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="host-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        interval = self.services.settings.compute.heartbeat_interval
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat round failed")
            self._stop.wait(interval)

    def beat(self) -> None:
        """One round over every enrolled host."""
        svc = self.services
        with svc.db.read() as s:
            # Disabled hosts too: they still run their instances (and evacuation needs them up).
            hosts = list(s.scalars(select(Host).where(Host.cert_fingerprint.is_not(None))))
        for host in hosts:
            self.beat_host(host.id)

    def beat_host(self, host_id: str) -> None:
        svc = self.services
        with svc.db.read() as s:
            host = s.get(Host, host_id)
            if host is None:
                return
            address, was = host.address, host.status
        # What the host reports is as of now: a job that ends while the answer is on its way
        # has changed what it reports (a guest it started is no longer shut off).
        asked = utcnow()
        try:
            status = svc.agents.for_address(address).heartbeat()
        except LaminaError as exc:
            with svc.db.write() as s:
                host = s.get(Host, host_id)
                down_after = svc.settings.compute.host_down_after
                if host and record_silence(s, host, exc.message, down_after):
                    log.warning("host %s is down: %s", host.name, exc.message)
            return
        with svc.db.write() as s:
            host = s.get(Host, host_id)
            if host is None:
                return
            record_heartbeat(s, host, status)
            came_back = was != "up"
            if came_back:
                log.info("host %s is up", host.name)
                # What the other domains do for a host that is back (the networks: push
                # it its networks again, it missed any change made meanwhile).
                for hook in lifecycle_of(svc).host_up:
                    hook(s, svc.jobs, host.id)
                # Undos that failed because a host could not be reached: try them now.
                if retry_pending_undos(s):
                    log.info("host %s is up: retrying the pending undos", host.name)
            self._sync_guests(s, host, {g.name: g.state for g in status.guests}, asked)
        if came_back:
            svc.wake_jobs()

    @staticmethod
    def _sync_guests(s: Session, host: Host, guests: dict[str, str], asked: datetime) -> None:
        """Take the guests' states the host reported as of ``asked`` for their instances,
        except those a job is working on or finished with since then (the report may
        predate what that job did)."""
        busy = set(
            s.scalars(
                select(Job.target_id).where(
                    or_(Job.status.in_(("queued", "running")), Job.finished_at >= asked)
                )
            )
        )
        instances = s.scalars(
            select(Instance).where(Instance.host_id == host.id, Instance.status.in_(SYNCED))
        )
        for instance in instances:
            if instance.id in busy or instance.domain_name not in guests:
                continue
            seen = GUEST_STATES.get(guests[instance.domain_name])
            if seen and seen != instance.status:
                log.info(
                    "instance %s: %s -> %s (seen on host)", instance.name, instance.status, seen
                )
                instance.status = seen
