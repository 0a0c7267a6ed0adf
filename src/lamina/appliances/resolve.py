"""Which appliances an install brings: the one asked for and, first, whatever its
``dependency`` entries and ``substrate`` need that nothing installed provides.

Only definitions are fetched (each verified against its channel's pinned key); a missing
requirement or a cycle is an error before any file is downloaded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import select

from lamina.appliances.models import InstalledAppliance
from lamina.channels.feed import Item
from lamina.channels.service import items
from lamina.channels.signing import parse_public_key
from lamina.channels.verify import fetch_verified, verify_definition
from lamina.errors import Conflict, NotFound
from lamina.formats.definition import Appliance, Requirement
from lamina.formats.parsing import parse_appliance
from lamina.formats.versions import Version

if TYPE_CHECKING:
    from lamina.services import Services


@dataclass(frozen=True)
class Offer:
    """An item of a subscribed channel, with the key its channel pinned."""

    channel_id: str
    key: str
    item: Item

    @property
    def label(self) -> str:
        return f"{self.item.name} {self.item.version}"


@dataclass(frozen=True)
class Planned:
    """An appliance to install: where it comes from, and its verified definition."""

    offer: Offer
    appliance: Appliance
    definition: bytes


def requirements(appliance: Appliance) -> tuple[Requirement, ...]:
    """What must be installed before ``appliance``: its dependencies and its substrate."""
    substrate = (appliance.substrate,) if appliance.substrate is not None else ()
    return appliance.dependencies + substrate


class Resolver:
    def __init__(self, svc: Services, client: httpx.Client) -> None:
        self.client = client
        with svc.db.read() as s:
            self.offers = [Offer(c.id, c.public_key, item) for c, item in items(s)]
            rows = s.scalars(
                select(InstalledAppliance).where(InstalledAppliance.status == "installed")
            )
            self.installed = [parse_appliance(row.definition) for row in rows]
        self._definitions: dict[str, tuple[Appliance, bytes]] = {}

    def definition(self, offer: Offer) -> tuple[Appliance, bytes]:
        """The offer's definition, fetched from its mirrors and verified (once)."""
        ref = offer.item.definition
        if ref.sha256 not in self._definitions:
            key = parse_public_key(offer.key)
            sink = io.BytesIO()
            fetch_verified(key, ref, sink, client=self.client)
            data = sink.getvalue()
            self._definitions[ref.sha256] = (verify_definition(key, offer.item, data), data)
        return self._definitions[ref.sha256]

    def find(self, name: str, version: str | None) -> Offer:
        """The newest offer of ``name`` (at ``version`` if given); NotFound."""
        wanted = Version.parse(version) if version else None
        found = [
            o
            for o in self.offers
            if o.item.name == name and (wanted is None or o.item.version == wanted)
        ]
        if not found:
            at = f" {version}" if version else ""
            raise NotFound(f"no subscribed channel has appliance {name}{at}", appliance=name)
        return max(found, key=lambda o: o.item.version)

    def provider(self, requirement: Requirement) -> Offer | None:
        """The newest offer meeting ``requirement``: by name from the feeds, else by the
        ``provides`` of the definitions (fetched only then)."""
        by_name = [
            o
            for o in self.offers
            if o.item.name == requirement.name and requirement.versions.contains(o.item.version)
        ]
        found = by_name or [o for o in self.offers if self.definition(o)[0].satisfies(requirement)]
        return max(found, key=lambda o: o.item.version) if found else None

    def plan(self, name: str, version: str | None) -> list[Planned]:
        """The appliances to install, dependencies first. Conflict if ``name`` is already
        installed at that version, a requirement is met by nothing installed or offered, or
        requirements form a cycle."""
        root = self.find(name, version)
        if any(a.name == name and a.version == root.item.version for a in self.installed):
            raise Conflict(f"{root.label} is already installed", appliance=name)
        order: list[Planned] = []

        def met(requirement: Requirement) -> bool:
            planned = (p.appliance for p in order)
            return any(a.satisfies(requirement) for a in (*self.installed, *planned))

        def visit(offer: Offer, chain: tuple[str, ...]) -> None:
            if any(p.offer == offer for p in order):
                return
            if offer.label in chain:
                cycle = " -> ".join((*chain[chain.index(offer.label) :], offer.label))
                raise Conflict(f"the dependencies form a cycle: {cycle}", cycle=cycle)
            appliance, data = self.definition(offer)
            for requirement in requirements(appliance):
                if met(requirement):
                    continue
                provider = self.provider(requirement)
                if provider is None:
                    raise Conflict(
                        f"{offer.label} needs {requirement}, which no installed appliance and "
                        "no subscribed channel provides; nothing was downloaded",
                        appliance=offer.item.name,
                        dependency=str(requirement),
                    )
                visit(provider, (*chain, offer.label))
            order.append(Planned(offer, appliance, data))

        visit(root, ())
        return order
