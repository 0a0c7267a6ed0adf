"""What one manager process holds: built once from the settings and passed around.

The container knows no domain: ``lamina.manager`` builds it and registers every domain's job
kinds, visibility checks and quota counters in it (``lamina.manager.build_services``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lamina.config import Settings
from lamina.db import Database
from lamina.db.deployment import deployment_id
from lamina.identity.authn import KeyCache
from lamina.identity.ca import CertificateAuthority
from lamina.identity.quotas import QuotaCounters
from lamina.identity.secretbox import SecretBox
from lamina.jobs.kinds import JobRegistry
from lamina.stores import load_stores
from lamina.stores.base import ImageStore
from lamina.wire.pool import AgentPool

if TYPE_CHECKING:
    from lamina.jobs.runner import JobRunner


@dataclass
class Services:
    settings: Settings
    db: Database
    ca: CertificateAuthority
    agents: AgentPool
    jobs: JobRegistry
    box: SecretBox
    keys: KeyCache
    stores: dict[str, ImageStore]
    runner: JobRunner | None = field(default=None)
    #: This deployment's id (``lamina.db.deployment``), named on every agent call.
    deployment: str = ""
    #: What each quota counts, by quota name (the domains' counters).
    quotas: QuotaCounters = field(default_factory=QuotaCounters)
    #: What the domains registered for an instance's life (``lamina.compute.lifecycle``).
    lifecycle: Any = field(default=None)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """The container, its registries empty; ``lamina.manager.build_services`` fills
        them."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        ca = CertificateAuthority(settings.data_dir.resolve() / "ca")
        registry = JobRegistry()
        box = SecretBox(settings.data_dir.resolve())
        keys = KeyCache(db, box, settings.identity.key_cache_seconds)
        stores = load_stores(settings)
        deployment = deployment_id(db)
        agents = AgentPool(ca.client_files(), deployment=deployment)
        return cls(settings, db, ca, agents, registry, box, keys, stores, deployment=deployment)

    def wake_jobs(self) -> None:
        if self.runner is not None:
            self.runner.wake()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        self.agents.close()
        self.db.dispose()
