"""Reconcile of guests: only this deployment's, only once past the grace period, and a fix
only for a difference shown (by its id) and still there unchanged (issue 12, item 11)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.agents import FakeHost, InProcessAgents
from harness import bare_services

from lamina.agent.drivers.base import GuestSpec, GuestTags
from lamina.compute.models import Host, Instance
from lamina.compute.reconcile import apply_fixes, find_differences
from lamina.services import Services
from lamina.wire.protocol import GuestStatus

OTHER = "0123456789abcdef"


class Guests:
    """The guests of host h1: a real agent over a ``FakeHypervisor`` (``tests/fakes``)."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.hv = host.hypervisor

    def add(self, name: str, deployment: str | None, age: float, state: str = "paused") -> str:
        """A guest as an agent defines it (tagged), ``age`` seconds old; one of that name is
        replaced (undefined and made again by someone else meanwhile)."""
        self.hv.guests.pop(name, None)
        tags = GuestTags(deployment, created=time.time() - age) if deployment else None
        self.hv.define(GuestSpec(name=name, vcpus=1, memory_mib=64, tags=tags))
        if state != "stopped":
            self.hv.start(name, paused=state == "paused")
        return name

    def guests(self) -> list[GuestStatus]:
        return self.host.client.guests()

    @property
    def undefined(self) -> list[str]:
        """The guests the manager undefined (through the agent's ``undefine``)."""
        return [name for method, name in self.hv.calls if method == "undefine" and name]


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    agents = InProcessAgents(tmp_path / "hosts", services.deployment)
    services.agents = agents  # type: ignore[assignment]
    with services.db.write() as s:
        s.add(Host(id="h1", name="h1", address="127.0.0.1:7000", status="up", cert_fingerprint="x"))
    try:
        yield services
    finally:
        services.close()
        agents.close()


def agent(svc: Services) -> Guests:
    agents: Any = svc.agents
    return Guests(agents.host("h1"))


def orphan() -> str:
    return f"lamina-{uuid.uuid4()}"


def test_the_deployment_id_is_made_once_and_kept(svc: Services) -> None:
    from lamina.db.deployment import deployment_id

    assert len(svc.deployment) == 16 and int(svc.deployment, 16) >= 0
    assert deployment_id(svc.db) == svc.deployment


def test_only_this_deployments_guests_past_the_grace_period_are_orphans(svc: Services) -> None:
    grace = svc.settings.reconcile.grace_seconds
    assert grace == 120.0
    ours_old = agent(svc).add(orphan(), svc.deployment, grace + 5)
    agent(svc).add(orphan(), svc.deployment, grace - 5)  # too new
    agent(svc).add(orphan(), OTHER, 3600)  # another deployment's
    agent(svc).add(orphan(), None, 3600)  # untagged, no record: not ours to judge
    agent(svc).add("someone-else", svc.deployment, 3600)  # not a lamina- name
    diffs = find_differences(svc)
    assert [(d.kind, d.resource) for d in diffs] == [
        ("orphan_guest", f"guest {ours_old} on host h1")
    ]


def test_an_untagged_guest_of_a_deleted_instance_is_reported_without_a_fix(
    svc: Services,
) -> None:
    gone = str(uuid.uuid4())
    with svc.db.write() as s:
        s.add(
            Instance(id=gone, name="gone", host_id="h1", status="deleted", vcpus=1, memory_mib=64)
        )
    agent(svc).add(f"lamina-{gone}", None, 0)
    [diff] = find_differences(svc)
    assert (diff.kind, diff.fix, diff.apply) == ("untagged_guest", None, None)


def test_a_fix_applies_only_the_ids_shown_and_still_found(svc: Services) -> None:
    first = agent(svc).add(orphan(), svc.deployment, 3600)
    shown = find_differences(svc)
    [ident] = [d.id for d in shown]
    assert [d.to_dict()["id"] for d in find_differences(svc)] == [ident]  # stable
    late = agent(svc).add(orphan(), svc.deployment, 3600)  # after the dry run

    results = apply_fixes(find_differences(svc), [ident])
    assert [(r["id"], r["outcome"]) for r in results] == [(ident, "fixed")]
    assert agent(svc).undefined == [first]
    assert late in {g.name for g in agent(svc).guests()}

    # Asked again, the same id is gone: nothing is done.
    [again] = apply_fixes(find_differences(svc), [ident])
    assert again["outcome"].startswith("not applied") and agent(svc).undefined == [first]


def test_a_guest_made_again_under_the_same_name_is_another_difference(svc: Services) -> None:
    name = agent(svc).add(orphan(), svc.deployment, 3600)
    [before] = find_differences(svc)
    agent(svc).add(name, svc.deployment, 200)  # undefined and made again meanwhile
    [after] = find_differences(svc)
    assert after.id != before.id
    [result] = apply_fixes([after], [before.id])
    assert result["outcome"].startswith("not applied") and agent(svc).undefined == []


def test_an_agent_keeps_the_first_deployment_it_is_given(tmp_path: Path) -> None:
    from lamina.agent.identity import DeploymentIdentity
    from lamina.errors import Conflict, InvalidRequest

    identity = DeploymentIdentity(tmp_path)
    assert identity.id is None
    identity.learn("aaaaaaaaaaaaaaaa")
    identity.learn("aaaaaaaaaaaaaaaa")
    assert DeploymentIdentity(tmp_path).id == "aaaaaaaaaaaaaaaa"  # kept across restarts
    with pytest.raises(Conflict, match="works for deployment aaaaaaaaaaaaaaaa"):
        identity.learn("bbbbbbbbbbbbbbbb")
    with pytest.raises(InvalidRequest):
        identity.learn("../../etc/passwd")
    assert identity.id == "aaaaaaaaaaaaaaaa"
