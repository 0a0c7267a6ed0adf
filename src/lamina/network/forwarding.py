"""Port forwards of an instance, the use cases a front end calls: list, publish (``expose``)
and stop publishing (``unexpose``). Each runs its own transaction and checks who may do it;
the records and the jobs that make a host listen are ``lamina.network.forwards``'.

Apart from ``lamina.network.service`` because ``lamina.compute.instances`` (which finds the
instance) imports that module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lamina.compute.instances import get_instance
from lamina.identity.principal import Principal
from lamina.jobs.models import Job
from lamina.network import forwards

if TYPE_CHECKING:
    from lamina.services import Services


def list_forwards(svc: Services, who: Principal, ref: str) -> list[dict[str, Any]]:
    """The forwards of an instance ``who`` may see, by guest port."""
    with svc.db.read() as s:
        instance = get_instance(s, ref, who)
        return [forwards.describe_forward(f) for f in forwards.list_forwards(s, instance.id)]


def expose(
    svc: Services,
    who: Principal,
    ref: str,
    *,
    guest_port: int,
    host_port: int | None = None,
    bind: str = "127.0.0.1",
    network: str | None = None,
) -> tuple[dict[str, Any], Job]:
    """Publish ``guest_port`` of an instance ``who`` may operate on its host (bound to
    ``bind``; ``host_port`` None: the host picks one, which the job answers)."""
    with svc.db.write() as s:
        instance = get_instance(s, ref, who, "operate")
        forward, job = forwards.expose(
            s, svc.jobs, instance, guest_port=guest_port, host_port=host_port, bind=bind,
            network=network, requester=who.user_id, may_float=who.is_admin,
        )  # fmt: skip
        result = forwards.describe_forward(forward), job
    svc.wake_jobs()
    return result


def unexpose(svc: Services, who: Principal, ref: str, forward: str) -> tuple[dict[str, Any], Job]:
    """Stop publishing a port of an instance ``who`` may operate (``forward``: its id or the
    guest port)."""
    with svc.db.write() as s:
        instance = get_instance(s, ref, who, "operate")
        row = forwards.find_forward(s, instance, forward)
        job = forwards.unexpose(s, svc.jobs, row, who.user_id)
        result = forwards.describe_forward(row), job
    svc.wake_jobs()
    return result
