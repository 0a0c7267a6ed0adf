"""Job lists in people's terms: each job names its target (through the names the domains
register with the job registry, and the name kept with the job once it ran, so a deleted
target is still named), and ``--target`` takes that name."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from harness import bare_services
from sqlalchemy import insert, select

from lamina.cli.job import KINDS, STATUSES
from lamina.compute.models import Host, Instance
from lamina.db import Database
from lamina.db.engine import MIGRATIONS
from lamina.db.types import utcnow
from lamina.errors import Ambiguous, ConfigError, InvalidRequest, NotFound
from lamina.identity.models import User
from lamina.identity.principal import Principal
from lamina.jobs.kinds import JobKind, JobRegistry, Step
from lamina.jobs.models import JOB_STATUSES, Job
from lamina.jobs.queries import find_jobs, show_job
from lamina.jobs.runner import JobRunner
from lamina.jobs.service import submit
from lamina.services import Services

NOOP = JobKind("test.noop", (Step("noop", lambda _ctx: None),))


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    services.jobs.register(NOOP)
    try:
        yield services
    finally:
        services.close()


def _people(svc: Services, *names: str) -> dict[str, Principal]:
    made = {}
    with svc.db.write() as s:
        for name in names:
            user = User(access_key=name, email=f"{name}@example.org", role="member")
            s.add(user)
            s.flush()
            made[name] = Principal(user.id, name, "member")
    return made


def _instance_job(svc: Services, name: str, owner: str) -> tuple[str, str]:
    """An instance called ``name`` and a job on it, not yet run: (instance id, job id)."""
    with svc.db.write() as s:
        if s.get(Host, "h1") is None:
            s.add(Host(id="h1", name="h1", address="127.0.0.1:7000", status="up"))
        instance = Instance(name=name, owner=owner, host_id="h1", status="running", vcpus=1)
        instance.memory_mib = 64
        s.add(instance)
        s.flush()
        job = submit(s, NOOP, {}, target_type="instance", target_id=instance.id, owner=owner)
        return instance.id, job.id


ADMIN = Principal("root", "admin", "admin")


def test_the_cli_offers_the_real_statuses_and_kinds(svc: Services) -> None:
    assert STATUSES == JOB_STATUSES
    assert sorted(KINDS) == [k for k in svc.jobs.kinds() if k != NOOP.name]


def test_jobs_name_their_targets_and_filter_by_name(svc: Services) -> None:
    people = _people(svc, "alice", "bob")
    alice, bob = people["alice"], people["bob"]
    web_a, job_a = _instance_job(svc, "web", alice.user_id)
    web_b, job_b = _instance_job(svc, "web", bob.user_id)
    _, job_db = _instance_job(svc, "db", alice.user_id)

    listed = find_jobs(svc, ADMIN)
    assert [(j["id"], j["target_name"]) for j in listed] == [
        (job_db, "db"),
        (job_b, "web"),
        (job_a, "web"),
    ]
    assert show_job(svc, ADMIN, job_a)["target_name"] == "web"
    assert [j["id"] for j in find_jobs(svc, ADMIN, limit=1)] == [job_db]
    assert [j["id"] for j in find_jobs(svc, ADMIN, kind="test.noop", status="queued")] == [
        job_db,
        job_b,
        job_a,
    ]
    assert find_jobs(svc, ADMIN, status="failed") == []

    # By name: a member's own "web"; two of them are ambiguous for the administrator.
    assert [j["id"] for j in find_jobs(svc, alice, target="web")] == [job_a]
    assert [j["id"] for j in find_jobs(svc, bob, target="web")] == [job_b]
    with pytest.raises(Ambiguous) as twice:
        find_jobs(svc, ADMIN, target="web")
    assert {c["id"] for c in twice.value.details["candidates"]} == {web_a, web_b}
    assert [j["id"] for j in find_jobs(svc, ADMIN, target=web_b)] == [job_b]
    # Bob sees nothing of Alice's "db": not even that it exists.
    with pytest.raises(NotFound):
        find_jobs(svc, bob, target="db")
    with pytest.raises(InvalidRequest, match="no job kind 'instance.creat'; one of"):
        find_jobs(svc, ADMIN, kind="instance.creat")


def test_a_job_keeps_its_targets_name_once_run(svc: Services) -> None:
    alice = _people(svc, "alice")["alice"]
    web, job = _instance_job(svc, "web", alice.user_id)
    runner = JobRunner(svc.db, svc.jobs, svc, runner_id="test:1:a")
    assert runner.claim() == job
    runner.run(job)
    with svc.db.write() as s:
        row = s.get(Job, job)
        assert row is not None and row.status == "succeeded" and row.target_name == "web"
        instance = s.get(Instance, web)
        assert instance is not None
        s.delete(instance)
    # The target is gone: the job still names it, and is found by that name.
    [shown] = find_jobs(svc, alice, target="web")
    assert shown["id"] == job and shown["target_name"] == "web"
    # A new "web" is what the name means now.
    web2, job2 = _instance_job(svc, "web", alice.user_id)
    assert [j["id"] for j in find_jobs(svc, alice, target="web")] == [job2]
    assert web2 != web


def test_a_target_type_has_its_names_registered_once() -> None:
    registry = JobRegistry()
    registry.register_names("instance", lambda _s, ids: dict.fromkeys(ids, "x"))
    with pytest.raises(ConfigError):
        registry.register_names("instance", lambda _s, ids: {})


def test_the_migration_names_the_jobs_of_targets_that_exist(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}", migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0010")
    now = utcnow()
    with db.engine.begin() as conn:
        conn.execute(insert(Host.__table__).values(id="h1", name="h1", address="a:1"))
        for ident, target in (("j1", "h1"), ("j2", "gone")):
            conn.execute(
                insert(Job.__table__).values(
                    id=ident,
                    kind="network.sync",
                    target_type="host",
                    target_id=target,
                    created_at=now,
                    deadline=now + timedelta(minutes=5),
                )
            )
    db.migrate()
    with db.read() as s:
        named = {ident: name for ident, name in s.execute(select(Job.id, Job.target_name))}
    assert named == {"j1": "h1", "j2": None}
    db.dispose()
