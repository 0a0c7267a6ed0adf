"""What one manager process holds: built once from the settings and passed around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lamina.config import Settings
from lamina.db import Database
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

    @classmethod
    def build(cls, settings: Settings) -> Services:
        from lamina.appliances.capture import register_capture_jobs
        from lamina.appliances.install import register_appliance_jobs
        from lamina.compute import quota as compute_quota
        from lamina.compute.jobs import register_compute_jobs
        from lamina.compute.visibility import instance_jobs_visible
        from lamina.db.deployment import deployment_id
        from lamina.images import quota as image_quota
        from lamina.network.forwards import register_forward_jobs
        from lamina.network.sync import register_network_jobs
        from lamina.volumes import quota as volume_quota
        from lamina.volumes.jobs import register_volume_jobs

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        ca = CertificateAuthority(settings.data_dir.resolve() / "ca")
        registry = JobRegistry()
        register_compute_jobs(registry)
        register_appliance_jobs(registry)
        register_capture_jobs(registry)
        register_volume_jobs(registry)
        register_network_jobs(registry)
        register_forward_jobs(registry)
        registry.register_visibility("instance", instance_jobs_visible)
        box = SecretBox(settings.data_dir.resolve())
        keys = KeyCache(db, box, settings.identity.key_cache_seconds)
        stores = load_stores(settings)
        deployment = deployment_id(db)
        agents = AgentPool(ca.client_files(), deployment=deployment)
        svc = cls(settings, db, ca, agents, registry, box, keys, stores, deployment=deployment)
        for counters in (compute_quota.COUNTERS, image_quota.COUNTERS, volume_quota.COUNTERS):
            for name, counter in counters.items():
                svc.quotas.register(name, counter)
        return svc

    def wake_jobs(self) -> None:
        if self.runner is not None:
            self.runner.wake()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        self.agents.close()
        self.db.dispose()
