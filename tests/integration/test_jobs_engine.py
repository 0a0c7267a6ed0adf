"""The job runner on SQLite and on a real PostgreSQL: steps, rollback, deadlines, leases,
resumption after an interruption, and several runners on one database."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from lamina.db import Database
from lamina.db.types import utcnow
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.jobs.models import Job
from lamina.jobs.runner import JobRunner, machine_boot
from lamina.jobs.service import get_job, stuck_jobs, submit

pytestmark = pytest.mark.integration


class Recorder:
    """Steps that log what they do, shared by all runners in a test."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def step(self, name: str, *, fail: bool = False, sleep: float = 0.0) -> Step:
        def do(ctx: StepContext) -> None:
            with self.lock:
                self.calls.append(f"do:{name}")
            time.sleep(sleep)
            ctx.state[name] = True
            if fail:
                raise RuntimeError(f"{name} broke")

        def undo(ctx: StepContext) -> None:
            with self.lock:
                self.calls.append(f"undo:{name}")

        return Step(name, do, undo, timeout=5)


def make_runner(db: Database, registry: JobRegistry, **kwargs: object) -> JobRunner:
    return JobRunner(db, registry, None, lease_seconds=2, poll_interval=0.05, **kwargs)  # type: ignore[arg-type]


def submit_job(db: Database, kind: JobKind, **kwargs: object) -> str:
    with db.write() as s:
        return submit(s, kind, {"n": 1}, **kwargs).id  # type: ignore[arg-type]


def job_of(db: Database, job_id: str) -> Job:
    with db.read() as s:
        return get_job(s, job_id)


def test_steps_run_in_order_and_state_is_kept(db: Database) -> None:
    rec, reg = Recorder(), JobRegistry()
    kind = reg.register(JobKind("k", (rec.step("a"), rec.step("b"))))
    job_id = submit_job(db, kind)
    runner = make_runner(db, reg)
    assert runner.claim() == job_id
    runner.run(job_id)
    job = job_of(db, job_id)
    assert job.status == "succeeded" and job.progress == 1.0
    assert job.state == {"a": True, "b": True}
    assert [s.status for s in job.steps] == ["succeeded", "succeeded"]
    assert rec.calls == ["do:a", "do:b"]


def test_failure_undoes_done_steps_in_reverse(db: Database) -> None:
    rec, reg = Recorder(), JobRegistry()
    failures: list[str] = []
    kind = reg.register(
        JobKind(
            "k",
            (rec.step("a"), rec.step("b"), rec.step("c", fail=True), rec.step("d")),
            on_failure=lambda ctx, err: failures.append(err),
        )
    )
    job_id = submit_job(db, kind)
    runner = make_runner(db, reg)
    runner.claim()
    runner.run(job_id)
    job = job_of(db, job_id)
    assert job.status == "rolled_back"
    assert job.error == "step 'c' failed: c broke"
    assert rec.calls == ["do:a", "do:b", "do:c", "undo:c", "undo:b", "undo:a"]
    assert [s.status for s in job.steps] == ["undone", "undone", "undone", "pending"]
    assert failures == [job.error]


def test_a_failed_undo_leaves_the_job_failed(db: Database) -> None:
    reg = JobRegistry()

    def boom(ctx: StepContext) -> None:
        raise RuntimeError("cannot undo")

    def broken(ctx: StepContext) -> None:
        raise RuntimeError("nope")

    kind = reg.register(JobKind("k", (Step("a", lambda c: None, boom), Step("b", broken))))
    job_id = submit_job(db, kind)
    runner = make_runner(db, reg)
    runner.claim()
    runner.run(job_id)
    job = job_of(db, job_id)
    assert job.status == "failed"
    assert "rollback incomplete" in (job.error or "")
    assert job.steps[0].status == "undo_failed" and job.steps[0].message == "cannot undo"


def test_a_hung_step_fails_the_job_naming_the_step(db: Database) -> None:
    reg = JobRegistry()
    release = threading.Event()
    kind = reg.register(
        JobKind("k", (Step("wait_forever", lambda c: release.wait(30), timeout=0.5),))
    )
    job_id = submit_job(db, kind)
    runner = make_runner(db, reg)
    runner.claim()
    started = time.monotonic()
    runner.run(job_id)
    release.set()
    assert time.monotonic() - started < 5
    job = job_of(db, job_id)
    assert job.status == "rolled_back"
    assert job.error == (
        "step 'wait_forever' did not finish within 0.5s (its step timeout); it is probably hung"
    )
    assert job.steps[0].status == "failed"


def test_the_job_deadline_caps_a_step(db: Database) -> None:
    reg = JobRegistry()
    release = threading.Event()
    kind = reg.register(JobKind("k", (Step("slow", lambda c: release.wait(30), timeout=60),)))
    job_id = submit_job(db, kind, deadline=1.0)
    runner = make_runner(db, reg)
    runner.claim()
    runner.run(job_id)
    release.set()
    job = job_of(db, job_id)
    assert job.status == "rolled_back"
    assert "the job's deadline" in (job.error or "")


def test_stuck_jobs_are_those_near_or_past_their_deadline(db: Database) -> None:
    reg = JobRegistry()
    kind = reg.register(JobKind("k", (Step("a", lambda c: None),), deadline=600))
    fresh = submit_job(db, kind)
    old = submit_job(db, kind)
    with db.write() as s:
        s.execute(update(Job).where(Job.id == old).values(deadline=utcnow() - timedelta(seconds=1)))
    with db.read() as s:
        stuck = [j.id for j in stuck_jobs(s, 0.2)]
    assert old in stuck and fresh not in stuck


def test_only_one_runner_claims_a_job(db: Database) -> None:
    reg = JobRegistry()
    kind = reg.register(JobKind("k", (Step("a", lambda c: None),)))
    job_id = submit_job(db, kind)
    a, b = make_runner(db, reg), make_runner(db, reg)
    assert a.claim() == job_id
    assert b.claim() is None


def test_an_interrupted_job_is_resumed_without_rerunning_done_steps(db: Database) -> None:
    rec, reg = Recorder(), JobRegistry()
    kind = reg.register(JobKind("k", (rec.step("a"), rec.step("b"), rec.step("c"))))
    job_id = submit_job(db, kind)
    # A manager ran step a, started b, and died: its lease is left to expire.
    dead = make_runner(db, reg, runner_id="dead")
    assert dead.claim() == job_id
    dead._update_job(job_id, status="running", state={"a": True})
    dead._step_done(job_id, 0, "succeeded", None)
    dead._step_start(job_id, 1, None)
    with db.write() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires=utcnow()))
    heir = make_runner(db, reg, runner_id="heir")
    assert heir.claim() == job_id
    heir.run(job_id)
    job = job_of(db, job_id)
    assert job.status == "succeeded" and job.runs == 2
    assert rec.calls == ["do:b", "do:c"]
    assert [s.attempts for s in job.steps] == [0, 2, 1]
    assert job.steps[1].message == "resumed after an interruption"
    assert job.steps[1].runner == "heir"


def test_an_interrupted_job_of_a_rollback_kind_is_undone(db: Database) -> None:
    rec, reg = Recorder(), JobRegistry()
    kind = reg.register(JobKind("k", (rec.step("a"), rec.step("b")), on_interrupt="rollback"))
    job_id = submit_job(db, kind)
    dead = make_runner(db, reg, runner_id="dead")
    dead.claim()
    dead._update_job(job_id, status="running")
    dead._step_done(job_id, 0, "succeeded", None)
    with db.write() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires=utcnow()))
    heir = make_runner(db, reg)
    heir.claim()
    heir.run(job_id)
    job = job_of(db, job_id)
    assert job.status == "rolled_back"
    assert rec.calls == ["undo:a"]


def test_a_runner_that_lost_its_lease_stops(db: Database) -> None:
    rec, reg = Recorder(), JobRegistry()
    kind = reg.register(JobKind("k", (rec.step("a"), rec.step("b"))))
    job_id = submit_job(db, kind)
    slow = make_runner(db, reg, runner_id="slow")
    slow.claim()
    with db.write() as s:  # another manager took the job over meanwhile
        s.execute(update(Job).where(Job.id == job_id).values(lease_owner="other"))
    slow.run(job_id)
    assert rec.calls == []
    assert job_of(db, job_id).status == "queued"


def test_several_runners_never_run_a_step_twice(db: Database) -> None:
    rec, reg = Recorder(), JobRegistry()
    kind = reg.register(JobKind("k", (rec.step("a", sleep=0.01), rec.step("b"))))
    ids = [submit_job(db, kind) for _ in range(30)]
    runners = [make_runner(db, reg, workers=3) for _ in range(3)]
    for runner in runners:
        runner.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(job_of(db, i).status == "succeeded" for i in ids):
                break
            time.sleep(0.2)
    finally:
        for runner in runners:
            runner.stop()
    assert all(job_of(db, i).status == "succeeded" for i in ids)
    assert len(rec.calls) == 60  # 30 jobs x 2 steps, each exactly once
    assert all(step.attempts == 1 for i in ids for step in job_of(db, i).steps)


def test_a_job_of_a_dead_manager_on_this_machine_is_taken_at_once(db: Database) -> None:
    reg = JobRegistry()
    kind = reg.register(JobKind("k", (Step("a", lambda c: None),)))
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid now names no process: a manager that crashed
    dead_job, live_job = submit_job(db, kind), submit_job(db, kind)
    later = utcnow() + timedelta(minutes=5)  # neither lease has expired
    with db.write() as s:
        s.execute(
            update(Job)
            .where(Job.id == dead_job)
            .values(lease_owner=f"{machine_boot()}:{finished.pid}:dead", lease_expires=later)
        )
        s.execute(
            update(Job)
            .where(Job.id == live_job)
            .values(lease_owner=f"{machine_boot()}:{os.getpid()}:alive", lease_expires=later)
        )
    runner = make_runner(db, reg)
    assert runner.claim() == dead_job
    assert runner.claim() is None
