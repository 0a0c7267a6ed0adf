"""Compare what the database says with what the hypervisors really hold.

Each difference comes with the safe fix it would apply, or none when only a person can
decide. A fix never destroys a guest Lamina still has a record for, and never touches a
guest whose name is not Lamina's (``lamina-<uuid>``). Instances with a job in progress are
skipped: their job owns them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from lamina.compute.jobs import GUEST_STATES
from lamina.compute.models import Host, Instance
from lamina.errors import GuestNotFound, LaminaError
from lamina.jobs.models import Job

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)
PREFIX = "lamina-"


@dataclass
class Difference:
    kind: str
    resource: str
    database: str
    backend: str
    fix: str | None
    apply: Callable[[], None] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "resource", "database", "backend", "fix")}


def find_differences(svc: Services) -> list[Difference]:
    with svc.db.read() as s:
        hosts = list(s.scalars(select(Host).where(Host.cert_fingerprint.is_not(None))))
        instances = list(s.scalars(select(Instance).where(Instance.host_id.is_not(None))))
        busy = set(s.scalars(select(Job.target_id).where(Job.status.in_(("queued", "running")))))
    by_guest = {i.domain_name: i for i in instances}
    diffs: list[Difference] = []
    for host in hosts:
        try:
            guests = {g.name: g for g in svc.agents.for_host(host).guests()}
        except LaminaError as exc:
            diffs.append(
                Difference("host_unreachable", f"host {host.name}", host.status, exc.message, None)
            )
            continue
        for instance in (i for i in instances if i.host_id == host.id and i.id not in busy):
            diffs.extend(_compare(svc, host, instance, guests.get(instance.domain_name)))
        for name, guest in guests.items():
            known = by_guest.get(name)
            if not name.startswith(PREFIX) or (known and known.status != "deleted"):
                continue
            if known and known.id in busy:
                continue
            diffs.append(
                Difference(
                    "orphan_guest",
                    f"guest {name} on host {host.name}",
                    "deleted" if known else "no record",
                    guest.state,
                    "destroy and undefine the guest and remove its files",
                    _undefine(svc, host, name),
                )
            )
    return diffs


def _compare(svc: Services, host: Host, instance: Instance, guest: Any) -> list[Difference]:
    what = f"instance {instance.name} ({instance.id})"
    if instance.status in ("deleted", "building", "deleting"):
        return []
    if guest is None:
        if instance.status == "error":
            return []
        return [
            Difference(
                "missing_guest",
                what,
                instance.status,
                "no guest on " + host.name,
                "mark the instance as error",
                _set_status(svc, instance.id, "error", "its guest vanished from the host"),
            )
        ]
    seen = GUEST_STATES.get(guest.state)
    if seen and seen != instance.status:
        return [
            Difference(
                "state_mismatch",
                what,
                instance.status,
                guest.state,
                f"record the instance as {seen}",
                _set_status(svc, instance.id, seen, None),
            )
        ]
    return []


def _set_status(
    svc: Services, instance_id: str, status: str, error: str | None
) -> Callable[[], None]:
    def apply() -> None:
        with svc.db.write() as s:
            instance = s.get(Instance, instance_id)
            if instance is not None:
                instance.status = status
                instance.error = error

    return apply


def _undefine(svc: Services, host: Host, name: str) -> Callable[[], None]:
    def apply() -> None:
        try:
            svc.agents.for_host(host).undefine(name)
        except GuestNotFound:
            pass

    return apply


def apply_fixes(diffs: list[Difference]) -> list[dict[str, Any]]:
    """Apply every safe fix; report what was done and what failed."""
    results = []
    for diff in diffs:
        outcome = "no safe fix"
        if diff.apply is not None:
            try:
                diff.apply()
                outcome = "fixed"
            except LaminaError as exc:
                outcome = f"fix failed: {exc.message}"
        log.info("reconcile %s %s: %s", diff.kind, diff.resource, outcome)
        results.append({**diff.to_dict(), "outcome": outcome})
    return results
