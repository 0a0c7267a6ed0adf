"""The manager's own use cases, which span the domains: whether it is alive, its
configuration, and reconcile (the database against what the hosts have). A front end (the
API's ``/health``, ``/config``, ``/reconcile``; a web UI) calls these; they sit above the
domains, beside ``lamina.manager``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from lamina import __version__
from lamina.compute.reconcile import Difference, apply_fixes, find_differences
from lamina.config import public_view
from lamina.identity.accounts import require_admin
from lamina.identity.principal import Principal
from lamina.services import Services
from lamina.volumes.reconcile import find_volume_differences


def health(svc: Services) -> dict[str, Any]:
    """Liveness, for anyone: the manager answers and its database does (one trivial query,
    cheap enough for the event loop)."""
    with svc.db.read() as s:
        s.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__}


def configuration(svc: Services, who: Principal) -> dict[str, Any]:
    """The settings in force, secrets left out (administrators only)."""
    require_admin(who)
    return public_view(svc.settings)


def differences(svc: Services, who: Principal) -> list[dict[str, Any]]:
    """Reconcile's dry run (administrators only): every difference between the database and
    the hosts, with the fix each would take."""
    require_admin(who)
    return [d.to_dict() for d in _differences(svc)]


def fix_differences(svc: Services, who: Principal, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Find the differences again and fix those of ``ids`` (from a dry run) that are still
    there, unchanged (administrators only); what became of each."""
    require_admin(who)
    return apply_fixes(_differences(svc), ids)


def _differences(svc: Services) -> list[Difference]:
    """Instances against their guests, then volumes, snapshots, targets and attachments
    (after the guests' fixes: an orphan guest undefined takes its stray disks with it)."""
    return find_differences(svc) + find_volume_differences(svc)
