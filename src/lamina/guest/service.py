"""What an instance may ask about itself: its record, variables and configuration items; it
may report its status and ask for actions. Every call names an instance and carries a
token, and the token must be that instance's."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.appliances.models import InstalledAppliance
from lamina.compute import instances
from lamina.compute.models import Instance
from lamina.db.types import utcnow
from lamina.errors import AuthenticationFailed, Forbidden, InvalidRequest, NotSupported
from lamina.guest.token import token_instance
from lamina.jobs.views import describe_job
from lamina.network.models import Port
from lamina.network.service import instance_nics

if TYPE_CHECKING:
    from lamina.services import Services

#: "self" names the token's own instance.
SELF = "self"
ACTIONS = ("reboot", "stop", "scale-out", "scale-in")
MAX_STATUS = 1024


# -- use cases -----------------------------------------------------------------------------
# What the configuration service's front ends call (the JSON routes, the XML-RPC methods):
# each proves the caller by its instance token (``who``), runs its own transaction and
# returns what the guest is shown.


@dataclass(frozen=True)
class Guest:
    """Who calls: an instance token, and the guest's address when the request came
    through a host's relay."""

    token: str | None
    address: str | None = None


def show_instance(svc: Services, who: Guest, ref: str) -> dict[str, Any]:
    """The instance's own record: names, addresses, variables, configuration items."""
    with svc.db.read() as s:
        me = caller(svc, s, who.token, who.address)
        return view(s, target(me, ref), svc.settings.network.domain)


def update_status(svc: Services, who: Guest, ref: str, status: str) -> dict[str, Any]:
    """Record the instance's own status (``guest_status`` in ``instance show``)."""
    with svc.db.write() as s:
        me = caller(svc, s, who.token, who.address)
        return report_status(target(me, ref), status)


def ask(svc: Services, who: Guest, ref: str, action: str) -> dict[str, Any]:
    """An action the instance asks for itself (``reboot``, ``stop``): its job."""
    with svc.db.write() as s:
        me = caller(svc, s, who.token, who.address)
        answer = request_action(svc, s, target(me, ref), action)
    svc.wake_jobs()
    return answer


# -- inside a transaction ------------------------------------------------------------------


def caller(
    svc: Services, session: Session, token: str | None, guest_address: str | None
) -> Instance:
    """The instance a token proves. Through a host's relay the request also carries the
    guest's address, which must be one of that instance's: a token copied to another guest
    is refused there."""
    if not token:
        raise AuthenticationFailed(
            "auth_missing",
            "no instance token: send Authorization: Bearer <token> (the token file of the "
            "instance's config disk)",
        )
    instance = session.get(Instance, token_instance(svc.box, token))
    if instance is None or instance.status in ("deleting", "deleted"):
        raise AuthenticationFailed("auth_bad_token", "the instance this token names is gone")
    if guest_address:
        addresses = set(session.scalars(select(Port.ip).where(Port.instance_id == instance.id)))
        if _normal(guest_address) not in addresses:
            raise Forbidden(
                f"this token is instance {instance.name}'s, which does not have address "
                f"{guest_address}"
            )
    return instance


def _normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        return address


def target(caller_instance: Instance, ref: str) -> Instance:
    """The instance a request names, which must be the caller itself."""
    if ref in (SELF, caller_instance.id, caller_instance.name):
        return caller_instance
    raise Forbidden(
        f"an instance may ask only about itself: this token is instance "
        f"{caller_instance.name}'s ({caller_instance.id}), not {ref}'s",
        instance=caller_instance.id,
    )


def view(session: Session, instance: Instance, domain: str) -> dict[str, Any]:
    """The instance as it sees itself."""
    nics = instance_nics(session, instance.id, domain)
    appliance = session.get(InstalledAppliance, instance.appliance_id or "")
    return {
        "id": instance.id,
        "name": instance.name,
        "hostname": instance.name,
        "fqdn": nics[0]["fqdn"] if nics else None,
        "networks": nics,
        "variables": dict(instance.variables or {}),
        "config": dict(instance.config or {}),
        "appliance": {"name": appliance.name, "version": appliance.version} if appliance else None,
        "group": instance.group_name,
        "status": instance.status,
        "guest_status": instance.guest_status,
        "vcpus": instance.vcpus,
        "memory_mib": instance.memory_mib,
    }


def report_status(instance: Instance, status: str) -> dict[str, Any]:
    text = status.strip()
    if not text or len(text) > MAX_STATUS or not text.isprintable():
        raise InvalidRequest(f"a status is 1 to {MAX_STATUS} printable characters")
    instance.guest_status = text
    instance.guest_status_at = utcnow()
    return {"guest_status": text, "at": instance.guest_status_at.isoformat()}


def request_action(
    svc: Services, session: Session, instance: Instance, action: str
) -> dict[str, Any]:
    """An action the instance asks for itself: a reboot or a stop now; scaling its group
    once scaling groups exist."""
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if action in ("scale-out", "scale-in"):
        raise NotSupported(
            f"{action}: instance {instance.name} is in no scaling group (scaling groups are "
            "not available yet)"
        )
    job = instances.act(session, svc.jobs, instance, action, requester=instance.owner)
    return {"job": describe_job(job)}
