"""The wiring of one manager process: the container (``lamina.services``) with every domain
registered in it.

The layers below (``services``, ``jobs``, ``identity``, ``db``) know no domain; each domain
offers what it contributes (job kinds, who may see a job on its resources, what a quota
counts, its tables) and this module, above the domains and below ``lamina.api``, hands them
over. A new domain or feature adds its lines to the lists here.
"""

from __future__ import annotations

from sqlalchemy import MetaData

from lamina.appliances import models as appliance_models
from lamina.appliances.capture import register_capture_jobs
from lamina.appliances.install import register_appliance_jobs
from lamina.appliances.layered import register_appliance_lifecycle
from lamina.appliances.views import register_appliance_views
from lamina.audit import models as audit_models
from lamina.channels import models as channel_models
from lamina.compute import models as compute_models
from lamina.compute import quota as compute_quota
from lamina.compute.checkpoint_jobs import register_checkpoint_jobs, register_checkpoint_lifecycle
from lamina.compute.jobs import register_compute_jobs
from lamina.compute.lifecycle import InstanceLifecycle
from lamina.compute.migration import register_migration_jobs
from lamina.compute.visibility import instance_jobs_visible
from lamina.config import Settings
from lamina.db import Base, Database
from lamina.db import deployment as deployment_models
from lamina.guest.token import register_guest_lifecycle
from lamina.identity import models as identity_models
from lamina.images import models as image_models
from lamina.images import quota as image_quota
from lamina.jobs import models as job_models
from lamina.jobs.kinds import names_by_id
from lamina.network import models as network_models
from lamina.network.forwards import register_forward_jobs
from lamina.network.lifecycle import register_network_lifecycle
from lamina.network.sync import register_network_jobs
from lamina.services import Services
from lamina.volumes import models as volume_models
from lamina.volumes import quota as volume_quota
from lamina.volumes.jobs import register_volume_jobs, register_volume_lifecycle
from lamina.volumes.views import register_volume_views

#: Every domain's models: imported, their tables are in ``Base.metadata``.
MODELS = (
    appliance_models,
    audit_models,
    channel_models,
    compute_models,
    deployment_models,
    identity_models,
    image_models,
    job_models,
    network_models,
    volume_models,
)


def build_services(settings: Settings) -> Services:
    """A ready manager: the container built from ``settings`` (its database migrated), with
    every domain registered in it."""
    svc = Services.build(settings)
    register(svc)
    return svc


def register(svc: Services) -> None:
    """Hand every domain's contributions to the container's registries."""
    registry = svc.jobs
    # What the domains add to an instance's life: its jobs' steps (in the places that
    # ``lamina.compute.lifecycle.ORDER`` gives them) and hooks; before its jobs are registered.
    svc.lifecycle = lifecycle = InstanceLifecycle()
    register_network_lifecycle(lifecycle)
    register_volume_lifecycle(lifecycle)
    register_appliance_lifecycle(lifecycle)
    register_guest_lifecycle(lifecycle)
    register_checkpoint_lifecycle(lifecycle)
    # What they add to an instance's description (its volumes, its appliance's name).
    register_volume_views(lifecycle)
    register_appliance_views(lifecycle)
    # Job kinds.
    register_compute_jobs(registry, lifecycle)
    register_migration_jobs(registry, svc.settings.migration.deadline_seconds)
    register_checkpoint_jobs(registry)
    register_appliance_jobs(registry)
    register_capture_jobs(registry)
    register_volume_jobs(registry)
    register_network_jobs(registry)
    register_forward_jobs(registry)
    # Who, besides a job's owner and the administrators, may see the jobs on a target.
    registry.register_visibility("instance", instance_jobs_visible)
    # What the targets of jobs are called, so job lists show (and filter by) names.
    for target_type, model in (
        ("instance", compute_models.Instance),
        ("host", compute_models.Host),
        ("network", network_models.Network),
        ("appliance", appliance_models.InstalledAppliance),
        ("volume", volume_models.Volume),
        ("snapshot", volume_models.Snapshot),
    ):
        registry.register_names(target_type, names_by_id(model))
    # What each quota counts.
    for counters in (compute_quota.COUNTERS, image_quota.COUNTERS, volume_quota.COUNTERS):
        for name, counter in counters.items():
            svc.quotas.register(name, counter)


def metadata() -> MetaData:
    """Every table of every domain (``MODELS``)."""
    return Base.metadata


def new_revision(database_url: str, message: str) -> None:
    """Write a new migration under ``lamina/db/migrations/versions`` for what the models have
    and the database at ``database_url`` (migrated first) lacks: the developer's
    ``alembic revision --autogenerate``. Read and correct what it writes before committing."""
    db = Database(database_url)
    try:
        db.new_revision(message, metadata())
    finally:
        db.dispose()
