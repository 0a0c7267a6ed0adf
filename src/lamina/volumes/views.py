"""What volumes add to an instance's description (``lamina.compute.lifecycle``'s views):
the volumes attached to it, so ``instance show`` lists them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.compute.lifecycle import InstanceLifecycle
from lamina.identity.access import may_see
from lamina.identity.principal import Principal
from lamina.volumes.models import Attachment, Volume
from lamina.volumes.service import VOLUME

if TYPE_CHECKING:
    from lamina.compute.models import Instance


def attached_volumes(
    session: Session, instances: Sequence[Instance], viewer: Principal | None
) -> dict[str, dict[str, Any]]:
    """Instance id -> ``{"volumes": [...]}``, in device order: each one's device, size and
    status, and its id and name if ``viewer`` may see the volume itself (a public
    instance's reader sees that a disk is attached, not whose volume it is)."""
    ids = [i.id for i in instances]
    if not ids:
        return {}
    rows = session.execute(
        select(Attachment, Volume)
        .join(Volume, Attachment.volume_id == Volume.id)
        .where(Attachment.instance_id.in_(ids))
        .order_by(Attachment.instance_id, Attachment.device)
    )
    found: dict[str, dict[str, Any]] = {}
    for attachment, volume in rows:
        shown = viewer is None or may_see(session, viewer, volume, VOLUME)
        found.setdefault(attachment.instance_id, {"volumes": []})["volumes"].append(
            {
                "id": volume.id if shown else None,
                # Volumes gain names in issue 14; until then None.
                "name": volume.name if shown else None,
                "device": attachment.device,
                "size_bytes": volume.size_bytes,
                "status": attachment.status,
            }
        )
    return found


def register_volume_views(lifecycle: InstanceLifecycle) -> None:
    lifecycle.views.append(attached_volumes)
