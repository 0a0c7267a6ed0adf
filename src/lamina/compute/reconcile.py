"""Compare what the database says with what the hypervisors really hold.

Each difference comes with the safe fix it would apply, or none when only a person can
decide, and an id: a digest of everything it says (and of the creation time of the object
it is about), so the same difference found again has the same id, and one that changed in
any way has another. ``apply_fixes`` applies only the differences whose ids an
administrator names (from a dry run): what was not shown, or changed since, is never fixed.

A fix never destroys a guest Lamina still has a record for, never touches a guest whose
name is not Lamina's (``lamina-<uuid>``), nor one tagged with another deployment, nor an
untagged one, nor one younger than ``reconcile.grace_seconds``. Instances with a job in
progress are skipped: their job owns them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from lamina.compute.jobs import GUEST_STATES
from lamina.compute.models import Host, Instance
from lamina.errors import LaminaError
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
    #: What else tells this object from another of the same name (its creation time).
    stamp: str = field(default="", repr=False)

    @property
    def id(self) -> str:
        """12 hex digits naming exactly this difference (see the module's docstring)."""
        parts = (self.kind, self.resource, self.database, self.backend, self.fix or "")
        text = "\x1f".join((*parts, self.stamp))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        keys = ("kind", "resource", "database", "backend", "fix")
        return {"id": self.id, **{k: getattr(self, k) for k in keys}}


def find_differences(svc: Services) -> list[Difference]:
    with svc.db.read() as s:
        hosts = list(s.scalars(select(Host).where(Host.cert_fingerprint.is_not(None))))
        instances = list(s.scalars(select(Instance).where(Instance.host_id.is_not(None))))
        busy = set(s.scalars(select(Job.target_id).where(Job.status.in_(("queued", "running")))))
    by_guest = {i.domain_name: i for i in instances}
    ours, grace = svc.deployment, svc.settings.reconcile.grace_seconds
    diffs: list[Difference] = []
    found: dict[str, dict[str, Any]] = {}
    for host in hosts:
        try:
            found[host.id] = {g.name: g for g in svc.agents.for_host(host).guests()}
        except LaminaError as exc:
            diffs.append(
                Difference("host_unreachable", f"host {host.name}", host.status, exc.message, None)
            )
    # Guests of live instances on a host other than their record's: a migration interrupted
    # (its job gone) left the guest on the destination, or a paused leftover there.
    moved = _elsewhere(svc, hosts, found, instances, busy)
    diffs.extend(moved.values())
    for host in hosts:
        if host.id not in found:
            continue
        guests = found[host.id]
        # A guest another deployment tagged is not the one our record speaks of.
        mine = {n: g for n, g in guests.items() if g.deployment in (None, ours)}
        for instance in (i for i in instances if i.host_id == host.id and i.id not in busy):
            if instance.id in moved:
                continue
            diffs.extend(_compare(svc, host, instance, mine.get(instance.domain_name)))
        for name, guest in guests.items():
            known = by_guest.get(name)
            if not name.startswith(PREFIX) or (known and known.status != "deleted"):
                continue
            if known and known.id in busy:
                continue
            where = f"guest {name} on host {host.name}"
            if guest.deployment is not None and guest.deployment != ours:
                continue  # another Lamina's: not ours to judge, nor to list
            if guest.deployment is None:
                if known:
                    # Named after an instance of ours, but untagged (made before guests
                    # were tagged): reported, never touched.
                    diffs.append(
                        Difference(
                            "untagged_guest", where, "deleted", f"{guest.state}; no deployment tag",
                            None,
                        )
                    )  # fmt: skip
                continue
            if guest.created_at is None or time.time() - guest.created_at < grace:
                continue  # too new: the job making it may not have recorded it yet
            diffs.append(
                Difference(
                    "orphan_guest",
                    where,
                    "deleted" if known else "no record",
                    guest.state,
                    "destroy and undefine the guest and remove its files",
                    _undefine(svc, host, name),
                    stamp=repr(guest.created_at),
                )
            )
    return diffs


def _elsewhere(
    svc: Services,
    hosts: Sequence[Host],
    found: dict[str, dict[str, Any]],
    instances: Sequence[Instance],
    busy: set[str | None],
) -> dict[str, Difference]:
    """Instance id -> the difference of a live instance (no job running) whose guest is also
    or only on another host: a paused incoming leftover there while it runs where recorded
    (fix: remove the leftover), or running there while its recorded host has none running
    (fix: record it there). Both running: reported, no fix."""
    by_id = {h.id: h for h in hosts}
    diffs: dict[str, Difference] = {}
    for instance in instances:
        if instance.id in busy or instance.status in ("deleted", "building", "deleting"):
            continue
        name = instance.domain_name
        others = [
            h for hid, guests in found.items() if hid != instance.host_id and name in guests
            for h in (by_id[hid],)
        ]  # fmt: skip
        if not others or instance.host_id not in found:
            continue
        home = by_id[instance.host_id]
        here = found[home.id].get(name)
        running_here = here is not None and here.state in ("running", "paused")
        other = others[0]
        there = found[other.id][name]
        what = f"instance {instance.name} ({instance.id})"
        try:
            presence = svc.agents.for_host(other).incoming_status(name)
        except LaminaError:
            continue
        if presence == "incoming" and running_here:
            diffs[instance.id] = Difference(
                "migration_leftover", what, f"on {home.name}", f"paused incoming on {other.name}",
                f"remove the incoming guest from {other.name}",
                _remove_incoming(svc, other, name),
            )  # fmt: skip
        elif presence == "arrived" and there.state in ("running", "paused") and not running_here:
            seen = GUEST_STATES.get(there.state, "error")
            diffs[instance.id] = Difference(
                "instance_elsewhere", what, f"on {home.name}", f"{there.state} on {other.name}",
                f"record the instance on {other.name} as {seen}",
                _set_host(svc, instance.id, other.id, seen),
            )  # fmt: skip
        elif presence == "arrived" and running_here and there.state in ("running", "paused"):
            diffs[instance.id] = Difference(
                "guest_twice",
                what,
                f"on {home.name}",
                f"also {there.state} on {other.name}",
                None,
            )
    return diffs


def _remove_incoming(svc: Services, host: Host, name: str) -> Callable[[], None]:
    def apply() -> None:
        # The agent refuses if the guest runs there after all (not a leftover).
        svc.agents.for_host(host).incoming_remove(name)

    return apply


def _set_host(svc: Services, instance_id: str, host_id: str, status: str) -> Callable[[], None]:
    def apply() -> None:
        with svc.db.write() as s:
            instance = s.get(Instance, instance_id)
            if instance is not None:
                instance.host_id = host_id
                instance.status = status
                instance.error = None

    return apply


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
        # Idempotent on the agent (the hypervisor contract): a guest gone since is no error.
        svc.agents.for_host(host).undefine(name)

    return apply


NOT_FOUND = "not applied: no longer found as shown (fixed, or changed since); reconcile again"


def apply_fixes(diffs: list[Difference], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Apply the safe fixes of the differences named by ``ids`` (from a dry run), each only
    if it is still among ``diffs`` (found again just now, unchanged); report, in the order
    asked, what was done, what failed and which ids are no longer found."""
    by_id = {d.id: d for d in diffs}
    results = []
    for ident in dict.fromkeys(ids):
        diff = by_id.get(ident)
        if diff is None:
            results.append(
                {"id": ident, "kind": None, "resource": None, "database": None,
                 "backend": None, "fix": None, "outcome": NOT_FOUND}
            )  # fmt: skip
            continue
        outcome = "no safe fix"
        if diff.apply is not None:
            try:
                diff.apply()
                outcome = "fixed"
            except LaminaError as exc:
                outcome = f"fix failed: {exc.message}"
        log.info("reconcile %s %s %s: %s", diff.id, diff.kind, diff.resource, outcome)
        results.append({**diff.to_dict(), "outcome": outcome})
    return results
