"""One appliance as a person wants to see it before deploying it (``lamina appliance show``):
every version the channels offer or that is installed, and for one version what its
definition holds: description, dependencies and substrate, variables (type, default,
required, description), ports, hardware, webpanel.

The definition of an installed version is the one stored at install; that of a version only
offered is fetched from its channel's mirrors and verified against the channel's pinned key
(a few kilobytes, no file of the appliance), as an install would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from lamina.appliances.catalog import catalog, unknown
from lamina.appliances.models import InstalledAppliance
from lamina.appliances.resolve import Offer, Resolver
from lamina.channels.service import http_client
from lamina.errors import LaminaError
from lamina.formats.definition import Appliance
from lamina.formats.parsing import parse_appliance
from lamina.formats.versions import Version
from lamina.identity.principal import Principal

if TYPE_CHECKING:
    from lamina.services import Services


def show_appliance(
    svc: Services, who: Principal, ref: str, version: str | None = None
) -> dict[str, Any]:
    """The appliance named ``ref`` (or the installed appliance of id ``ref``): ``versions``
    (newest first: ``version``, ``channel``, ``channel_title``, ``installed``, ``status``,
    ``id``) and, for ``version`` (default: the newest installed, else the newest offered),
    its definition as data. NotFound (no such appliance or version, with the closest name).
    Anyone may read it."""
    with svc.db.read() as s:
        row = s.get(InstalledAppliance, ref)
        name = row.name if row is not None else ref
        if row is not None and version is None:
            version = row.version
        entries = [e for e in catalog(s) if e["name"] == name]
        if not entries:
            raise unknown(s, name, version)
        entries.sort(key=lambda e: Version.parse(e["version"]), reverse=True)
        if version is not None:
            wanted = Version.parse(version)
            chosen = [e for e in entries if Version.parse(e["version"]) == wanted]
            if not chosen:
                raise unknown(s, name, version)
        else:
            chosen = [e for e in entries if e["installed"]] or entries
        entry = chosen[0]
        stored = None
        if entry["id"] is not None:
            stored = s.scalar(
                select(InstalledAppliance.definition).where(InstalledAppliance.id == entry["id"])
            )
    answer: dict[str, Any] = {
        "name": name,
        "version": entry["version"],
        "kind": entry["kind"],
        "label": entry["label"],
        "description": entry["description"],
        "installed": entry["installed"],
        "status": entry["status"],
        "id": entry["id"],
        "channel": entry["channel"],
        "channel_title": entry["channel_title"],
        "versions": [
            {k: e[k] for k in ("version", "channel", "channel_title", "installed", "status", "id")}
            for e in entries
        ],
        "definition_error": None,
    }
    try:
        appliance = parse_appliance(stored) if stored is not None else _fetched(svc, name, entry)
    except LaminaError as exc:
        # The listing still says what the feed knows; the definition could not be had now.
        answer["definition_error"] = exc.message
        return answer
    answer.update(definition_data(appliance))
    return answer


def _fetched(svc: Services, name: str, entry: dict[str, Any]) -> Appliance:
    """The offered version's definition, fetched from its channel and verified."""
    with http_client(svc) as client:
        resolver = Resolver(svc, client)
        offer: Offer = resolver.find(name, entry["version"])
        return resolver.definition(offer)[0]


def definition_data(appliance: Appliance) -> dict[str, Any]:
    """What a definition holds that a person deploying it needs, as JSON-ready data."""
    hardware = appliance.hardware
    return {
        "label": appliance.label,
        "description": appliance.description,
        "provides": list(appliance.provides),
        "dependencies": [str(r) for r in appliance.dependencies],
        "substrate": str(appliance.substrate) if appliance.substrate else None,
        "variables": [
            {
                "name": v.name,
                "type": v.type,
                "default": v.default,
                "required": v.required,
                "description": v.description,
            }
            for v in appliance.variables
        ],
        "ports": [
            {
                "number": appliance.port_number(p),
                "protocol": p.protocol,
                "variable": p.variable,
                "name": p.name,
                "description": p.description,
            }
            for p in appliance.ports
        ],
        "webpanel": appliance.webpanel,
        "url": appliance.url,
        "size_mib": appliance.size_mib,
        "hardware": None
        if hardware is None
        else {
            "cpus": hardware.cpus,
            "memory_mib": hardware.memory_mib,
            "ostype": hardware.ostype,
            "disks": [
                {"name": d.name, "type": d.type, "size_mib": d.size_mib} for d in hardware.disks
            ],
        },
        "layers": len(appliance.layers),
        "templates": list(appliance.templates),
    }
