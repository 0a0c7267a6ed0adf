"""The wiring (``lamina.manager``): the layers below the domains know none of them (the
``layers`` import contract), and the domains' contributions reach them by registration: who
may see a job on a target, what each quota counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import bare_services

from lamina.compute.models import Host, Instance
from lamina.errors import ConfigError, InvalidState, NotFound, QuotaExceeded
from lamina.identity.models import QUOTAS, User
from lamina.identity.principal import Principal
from lamina.identity.quotas import QuotaCounters, check_quotas
from lamina.identity.users import clean_users, delete_user
from lamina.jobs.kinds import JobKind, JobRegistry, Step
from lamina.jobs.service import get_job, submit
from lamina.services import Services


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    try:
        yield services
    finally:
        services.close()


def _users(svc: Services, *names: str, **quotas: int) -> dict[str, Principal]:
    made = {}
    with svc.db.write() as s:
        for name in names:
            user = User(access_key=name, email=f"{name}@example.org", role="member")
            for quota, limit in quotas.items():
                setattr(user, f"quota_{quota}", limit)
            s.add(user)
            s.flush()
            made[name] = Principal(user.id, name, "member")
    return made


def _instance(svc: Services, owner: str, status: str = "running") -> str:
    with svc.db.write() as s:
        if s.get(Host, "h1") is None:
            s.add(Host(id="h1", name="h1", address="127.0.0.1:7000", status="up"))
        instance = Instance(
            name="vm", owner=owner, host_id="h1", status=status, vcpus=2, memory_mib=64
        )
        s.add(instance)
        s.flush()
        return instance.id


def test_every_quota_has_a_counter(svc: Services) -> None:
    assert sorted(svc.quotas) == sorted(QUOTAS)


def test_a_member_sees_the_jobs_others_run_on_what_they_own(svc: Services) -> None:
    people = _users(svc, "alice", "bob", "carol")
    target = _instance(svc, people["alice"].user_id)
    kind = JobKind("test.noop", (Step("noop", lambda _ctx: None),))
    with svc.db.write() as s:
        job = submit(
            s, kind, {}, target_type="instance", target_id=target, owner=people["bob"].user_id
        ).id
    with svc.db.read() as s:
        for who in ("alice", "bob"):
            assert get_job(s, job, people[who], svc.jobs).id == job
        with pytest.raises(NotFound):
            get_job(s, job, people["carol"], svc.jobs)
        # A registry that knows no instances shows the job to its owner only.
        with pytest.raises(NotFound):
            get_job(s, job, people["alice"], JobRegistry())
        with pytest.raises(TypeError):
            get_job(s, job, people["alice"])


def test_a_target_type_has_one_visibility_check() -> None:
    registry = JobRegistry()
    registry.register_visibility("instance", lambda _s, _id, _who: True)
    with pytest.raises(ConfigError):
        registry.register_visibility("instance", lambda _s, _id, _who: True)


def test_quotas_count_with_the_domains_counters(svc: Services) -> None:
    alice = _users(svc, "alice", instances=1, vcpus=3)["alice"]
    _instance(svc, alice.user_id)
    _instance(svc, alice.user_id, status="deleted")
    with svc.db.write() as s, pytest.raises(QuotaExceeded) as refused:
        check_quotas(s, alice.user_id, {"instances": 1}, svc.quotas)
    assert str(refused.value) == "quota exceeded: instances (limit 1, in use 1, requested 1)"
    with svc.db.write() as s, pytest.raises(QuotaExceeded, match="vcpus .limit 3, in use 2"):
        check_quotas(s, alice.user_id, {"vcpus": 2}, svc.quotas)
    with svc.db.write() as s:
        check_quotas(s, alice.user_id, {"vcpus": 1, "memory_mib": 10**6}, svc.quotas)


def test_a_counter_is_for_a_known_quota_once() -> None:
    counters = QuotaCounters()
    counters.register("instances", lambda _s, _user: 0)
    with pytest.raises(ConfigError):
        counters.register("instances", lambda _s, _user: 0)
    with pytest.raises(ConfigError):
        counters.register("gpus", lambda _s, _user: 0)


def test_a_user_with_live_instances_stays(svc: Services) -> None:
    people = _users(svc, "alice", "bob")
    _instance(svc, people["alice"].user_id)
    _instance(svc, people["bob"].user_id, status="deleted")
    with svc.db.write() as s, pytest.raises(InvalidState, match="still owns 1 instance"):
        delete_user(s, "alice", svc.quotas)
    with svc.db.write() as s:
        assert clean_users(s, keep="nobody", counters=svc.quotas) == ["bob"]
