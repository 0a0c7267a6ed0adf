"""The catalog: the appliances of every subscribed channel and the installed ones, each once,
with whether and how it is installed; which installed appliances came from a channel (what
keeps the channel from being removed); and finding an appliance by the name a person gave
(``find_installed``, ``unknown``). ``list_appliances`` and ``remove_channel`` are the use
cases a front end calls."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.appliances.models import InstalledAppliance
from lamina.channels.models import Channel
from lamina.channels.service import items, remove
from lamina.db.refs import pick_named
from lamina.errors import Ambiguous, InvalidRequest, InvalidState, NotFound
from lamina.formats.parsing import parse_appliance
from lamina.formats.versions import Version
from lamina.identity.principal import Principal

if TYPE_CHECKING:
    from lamina.services import Services


def list_appliances(svc: Services, who: Principal, installed: bool = False) -> list[dict[str, Any]]:
    """The catalog (anyone may read it; ``installed``: only what is installed): see
    ``catalog``."""
    with svc.db.read() as s:
        return catalog(s, installed)


def remove_channel(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    """Unsubscribe from a channel (id, URL or title; administrators only); ``Conflict`` while
    appliances installed from it remain. The channel as it was."""
    return remove(svc, who, ref, installed_from)


def catalog(session: Session, installed_only: bool = False) -> list[dict[str, Any]]:
    """The appliances of every channel, and those installed (from a channel that may no
    longer list them), each once, with whether and how it is installed."""
    rows = {
        (a.channel_id, a.name, a.version): a for a in session.scalars(select(InstalledAppliance))
    }
    titles = {ident: title for ident, title in session.execute(select(Channel.id, Channel.title))}
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
    for entry in entries:
        entry["channel_title"] = titles.get(entry["channel"] or "")
    if installed_only:
        entries = [e for e in entries if e["installed"]]
    return sorted(
        entries, key=lambda e: (e["name"], Version.parse(e["version"]), e["channel"] or "")
    )


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


# -- names ----------------------------------------------------------------------------------


def known_names(session: Session) -> set[str]:
    """The name of every appliance a channel offers or that is installed."""
    offered = {item.name for _, item in items(session)}
    return offered | set(session.scalars(select(InstalledAppliance.name)))


def offered_versions(session: Session, name: str) -> list[str]:
    """The versions of ``name`` the subscribed channels offer, newest first."""
    found = {item.version for _, item in items(session) if item.name == name}
    return [str(v) for v in sorted(found, reverse=True)]


def unknown(
    session: Session, ref: str, version: str | None = None, *, deploying: bool = False
) -> NotFound | InvalidState:
    """The error for a name no installed appliance has: ``no such appliance`` (with the
    closest known name, if one is close) when no channel offers it either; else that it is
    not installed and how to install it: ``NotFound``, or for a deploy (``deploying``)
    ``InvalidState`` with ``details.installable`` true and the versions ``offered``, so a
    front end may install it first."""
    offered = offered_versions(session, ref)
    wanted = _version(version) if version else None
    at = f" {version}" if version else ""
    if offered and (wanted is None or wanted in map(Version.parse, offered)):
        ref_at = f"{ref}:{version}" if version else ref
        message = (
            f"appliance {ref}{at} is not installed (a channel offers {', '.join(offered)}); "
            f"install it with: lamina appliance install {ref_at}"
        )
        if deploying:
            return InvalidState(message, appliance=ref, installable=True, offered=offered)
        return NotFound(message, appliance=ref, offered=offered)
    if offered:
        return NotFound(
            f"no version {version} of appliance {ref} (a channel offers {', '.join(offered)})",
            appliance=ref,
            offered=offered,
        )
    close = difflib.get_close_matches(ref, sorted(known_names(session)), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return NotFound(
        f"no such appliance {ref!r}{hint}; lamina appliance list shows what the channels offer",
        appliance=ref,
        suggestion=close[0] if close else None,
    )


def _version(text: str) -> Version:
    try:
        return Version.parse(text)
    except InvalidRequest:
        raise InvalidRequest(f"{text!r} is not a version", version=text) from None


def find_installed(
    session: Session,
    ref: str,
    version: str | None = None,
    *,
    newest: bool = True,
    deploying: bool = False,
) -> InstalledAppliance:
    """An installed appliance by id, else by name (and ``version``). Several versions of a
    name: the newest installed one when ``newest`` (what a deploy takes), else
    ``Ambiguous`` listing them (what a removal needs). Else the error ``unknown`` gives."""
    row = session.get(InstalledAppliance, ref)
    if row is not None:
        if version is None or _version(version) == Version.parse(row.version):
            return row
        raise NotFound(
            f"appliance {ref} is {row.name} {row.version}, not version {version}",
            appliance=ref,
        )
    query = select(InstalledAppliance).where(InstalledAppliance.name == ref)
    named = list(session.scalars(query))
    if version is not None:
        wanted = _version(version)
        named = [r for r in named if Version.parse(r.version) == wanted]
    if not named:
        raise unknown(session, ref, version, deploying=deploying)
    if newest:
        usable = [r for r in named if r.status == "installed"] or named
        return max(usable, key=lambda r: Version.parse(r.version))
    try:
        found = pick_named("appliance", ref, named, None, owner=lambda _: None)
    except Ambiguous as exc:
        versions = ", ".join(sorted((r.version for r in named), key=Version.parse))
        raise Ambiguous(
            f"several versions of appliance {ref} are installed ({versions}): give --version "
            "or the id",
            candidates=[
                {"id": r.id, "owner": None, "version": r.version}
                for r in sorted(named, key=lambda r: Version.parse(r.version))
            ],
        ) from exc
    if found is None:
        raise unknown(session, ref, version, deploying=deploying)
    return found
