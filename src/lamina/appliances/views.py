"""What appliances add to an instance's description (``lamina.compute.lifecycle``'s views):
the name and version of the appliance it was deployed from, beside its id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.appliances.models import InstalledAppliance
from lamina.compute.lifecycle import InstanceLifecycle
from lamina.identity.principal import Principal

if TYPE_CHECKING:
    from lamina.compute.models import Instance


def appliance_of(
    session: Session, instances: Sequence[Instance], viewer: Principal | None
) -> dict[str, dict[str, Any]]:
    """Instance id -> ``{"appliance": {"id", "name", "version"}}`` for the instances deployed
    from an appliance still installed (one removed since shows only its id, in
    ``appliance_id``). Installed appliances are the catalog's, visible to every user."""
    wanted = {i.appliance_id for i in instances if i.appliance_id}
    if not wanted:
        return {}
    rows = session.execute(
        select(InstalledAppliance.id, InstalledAppliance.name, InstalledAppliance.version).where(
            InstalledAppliance.id.in_(wanted)
        )
    )
    by_id = {row.id: {"id": row.id, "name": row.name, "version": row.version} for row in rows}
    return {
        i.id: {"appliance": by_id[i.appliance_id]} for i in instances if i.appliance_id in by_id
    }


def register_appliance_views(lifecycle: InstanceLifecycle) -> None:
    lifecycle.views.append(appliance_of)
