"""What one manager process holds: built once from the settings and passed around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lamina.compute.agents import AgentPool
from lamina.config import Settings
from lamina.db import Database
from lamina.identity.ca import CertificateAuthority
from lamina.jobs.kinds import JobRegistry

if TYPE_CHECKING:
    from lamina.jobs.runner import JobRunner


@dataclass
class Services:
    settings: Settings
    db: Database
    ca: CertificateAuthority
    agents: AgentPool
    jobs: JobRegistry
    runner: JobRunner | None = field(default=None)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        from lamina.compute.jobs import register_compute_jobs

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        ca = CertificateAuthority(settings.data_dir.resolve() / "ca")
        registry = JobRegistry()
        register_compute_jobs(registry)
        return cls(settings, db, ca, AgentPool(ca), registry)

    def wake_jobs(self) -> None:
        if self.runner is not None:
            self.runner.wake()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        self.agents.close()
        self.db.dispose()
