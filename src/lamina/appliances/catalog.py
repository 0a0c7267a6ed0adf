"""The catalog: the appliances of every subscribed channel and the installed ones, each once,
with whether and how it is installed; and which installed appliances came from a channel
(what keeps the channel from being removed). ``list_appliances`` and ``remove_channel`` are
the use cases a front end calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.appliances.models import InstalledAppliance
from lamina.channels.service import items, remove
from lamina.formats.parsing import parse_appliance
from lamina.identity.principal import Principal

if TYPE_CHECKING:
    from lamina.services import Services


def list_appliances(svc: Services, who: Principal, installed: bool = False) -> list[dict[str, Any]]:
    """The catalog (anyone may read it; ``installed``: only what is installed): see
    ``catalog``."""
    with svc.db.read() as s:
        return catalog(s, installed)


def remove_channel(svc: Services, who: Principal, channel_id: str) -> dict[str, Any]:
    """Unsubscribe from a channel (administrators only); ``Conflict`` while appliances
    installed from it remain. The channel as it was."""
    return remove(svc, who, channel_id, installed_from)


def catalog(session: Session, installed_only: bool = False) -> list[dict[str, Any]]:
    """The appliances of every channel, and those installed (from a channel that may no
    longer list them), each once, with whether and how it is installed."""
    rows = {
        (a.channel_id, a.name, a.version): a for a in session.scalars(select(InstalledAppliance))
    }
    entries = []
    for channel, item in items(session):
        row = rows.pop((channel.id, item.name, str(item.version)), None)
        entries.append(
            _entry(
                item.name,
                str(item.version),
                item.kind,
                item.label,
                item.description,
                channel.id,
                row,
            )
        )
    for row in rows.values():
        appliance = parse_appliance(row.definition)
        entries.append(
            _entry(
                row.name,
                row.version,
                row.kind,
                appliance.label,
                appliance.description,
                row.channel_id,
                row,
            )
        )
    if installed_only:
        entries = [e for e in entries if e["installed"]]
    return sorted(entries, key=lambda e: (e["name"], e["version"], e["channel"] or ""))


def installed_from(session: Session, channel_id: str) -> list[str]:
    """The names of the appliances installed (or installing) from the channel: the
    ``in_use`` check of ``lamina.channels.service.remove``."""
    return list(
        session.scalars(
            select(InstalledAppliance.name).where(InstalledAppliance.channel_id == channel_id)
        ).all()
    )


def _entry(
    name: str,
    version: str,
    kind: str,
    label: str,
    description: str,
    channel_id: str | None,
    row: InstalledAppliance | None,
) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "kind": kind,
        "label": label,
        "description": description,
        "channel": channel_id,
        "installed": row is not None and row.status == "installed",
        "id": row.id if row else None,
        "status": row.status if row else None,
    }
