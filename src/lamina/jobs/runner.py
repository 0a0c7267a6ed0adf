"""Runs persisted jobs: claims them with a lease, records every step, resumes or rolls back.

Several managers may share one database. A manager owns a job only while it holds the job's
lease (``lease_owner``/``lease_expires``), taken and renewed with conditional UPDATEs, which are
atomic on SQLite and PostgreSQL alike. Every step transition is written with ``WHERE
lease_owner = me``; a manager that finds its lease gone stops at once, so no step is ever run
by two managers. A job whose lease expired (its manager crashed) is taken over: the step that
was running is run again (steps are idempotent) or, for kinds that ask for it, everything done
is undone.

An undo that fails because its host cannot be reached (``BackendUnavailable``, a connection
error) is not given up: its step is ``undo_pending``, the job ``failed`` with its rollback
pending and a retry time (``undo_retry_at``) in the database, so any manager, after a restart
too, takes the job up again when that time comes (backing off, or at once when the host
monitor sees a host come back: ``retry_pending_undos``) until every such undo ran. Then the
kind's ``on_failure`` hook runs again (unless a later job took the resource over) and the job
ends ``rolled_back``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import and_, exists, or_, select, update

from lamina.db import Database
from lamina.db.types import utcnow
from lamina.errors import BackendUnavailable
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.jobs.models import Job, JobStep

log = logging.getLogger(__name__)
#: Appended to the error of a job whose rollback waits for a host.
PENDING = " (rollback pending: an undo waits for its host to answer; it is retried by itself)"
INCOMPLETE = " (rollback incomplete: see the steps)"


class LeaseLost(Exception):
    """Another manager took this job over; stop touching it."""


class StepTimeout(Exception):
    pass


class JobRunner:
    def __init__(
        self,
        db: Database,
        registry: JobRegistry,
        services: Any,
        *,
        workers: int = 4,
        lease_seconds: float = 15.0,
        poll_interval: float = 0.5,
        runner_id: str | None = None,
        undo_retry_seconds: float = 5.0,
        undo_retry_max_seconds: float = 300.0,
    ) -> None:
        self.db = db
        self.registry = registry
        self.services = services
        self.workers = workers
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_interval = poll_interval
        self.undo_retry = (undo_retry_seconds, undo_retry_max_seconds)
        self.id = runner_id or f"{machine_boot()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._slots = threading.Semaphore(workers)
        self._threads: list[threading.Thread] = []

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._poll_loop, "jobs-poll"), (self._renew_loop, "jobs-lease")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                while self._slots.acquire(blocking=False):
                    job_id = self.claim()
                    if job_id is None:
                        self._slots.release()
                        break
                    threading.Thread(
                        target=self._run_in_slot,
                        args=(job_id,),
                        name=f"job-{job_id[:8]}",
                        daemon=True,
                    ).start()
            except Exception:
                log.exception("job poll failed")
            self._wake.wait(self.poll_interval)

    def _run_in_slot(self, job_id: str) -> None:
        try:
            self.run(job_id)
        finally:
            self._slots.release()
            self._wake.set()

    def _renew_loop(self) -> None:
        interval = self.lease.total_seconds() / 3
        while not self._stop.wait(interval):
            with self._held_lock:
                held = list(self._held)
            for job_id in held:
                try:
                    with self.db.write() as s:
                        done = _rowcount(
                            s.execute(
                                update(Job)
                                .where(Job.id == job_id, Job.lease_owner == self.id)
                                .values(lease_expires=utcnow() + self.lease)
                            )
                        )
                    if not done:
                        log.warning("lost the lease on job %s", job_id)
                        self._release(job_id)
                except Exception:
                    log.exception("could not renew the lease on job %s", job_id)

    # -- claiming -------------------------------------------------------------------------

    def claim(self) -> str | None:
        """Take the lease on the oldest runnable job, or return None."""
        now = utcnow()
        dead = self._dead_local_owners()
        free = or_(Job.lease_owner.is_(None), Job.lease_expires < now, Job.lease_owner.in_(dead))
        # Unfinished jobs, and failed ones whose pending undos are due for another try.
        runnable = or_(
            Job.status.in_(("queued", "running")),
            and_(Job.status == "failed", Job.undo_retry_at <= now),
        )
        with self.db.read() as s:
            candidates = s.scalars(
                select(Job.id).where(runnable, free).order_by(Job.created_at).limit(10)
            ).all()
        for job_id in candidates:
            with self.db.write() as s:
                taken = _rowcount(
                    s.execute(
                        update(Job)
                        .where(and_(Job.id == job_id, runnable, free))
                        .values(
                            lease_owner=self.id, lease_expires=now + self.lease, runs=Job.runs + 1
                        )
                    )
                )
            if taken:
                with self._held_lock:
                    self._held.add(job_id)
                return job_id
        return None

    def _dead_local_owners(self) -> list[str]:
        """Leases held by managers on this machine whose process is gone (a crash, a restart):
        their jobs need not wait for the lease to expire. Runner ids are host:pid:nonce."""
        host = self.id.split(":", 1)[0]
        with self.db.read() as s:
            owners = s.scalars(
                select(Job.lease_owner)
                .where(Job.status.in_(("queued", "running")), Job.lease_owner.like(f"{host}:%"))
                .distinct()
            ).all()
        return [o for o in owners if o and o != self.id and not _process_alive(o)]

    def _release(self, job_id: str) -> None:
        with self._held_lock:
            self._held.discard(job_id)

    def _holds(self, job_id: str) -> bool:
        with self._held_lock:
            return job_id in self._held

    # -- running --------------------------------------------------------------------------

    def run(self, job_id: str) -> None:
        """Run (or resume, or roll back) a job whose lease this runner holds."""
        try:
            self._run(job_id)
        except LeaseLost:
            log.warning("job %s: lease lost, leaving it to its new owner", job_id)
        except Exception:
            log.exception("job %s: runner error", job_id)
        finally:
            self._release(job_id)

    def _run(self, job_id: str) -> None:
        with self.db.read() as s:
            job = s.get(Job, job_id)
            assert job is not None
            kind = self.registry.get(job.kind)
            interrupted = job.status == "running"
            ctx = StepContext(job.id, dict(job.params), dict(job.state), self.services)
            steps = {st.seq: st.status for st in job.steps}
            deadline = job.deadline
            error = job.error
            retrying = job.status == "failed"
            attempts = job.undo_attempts
            # The target's name, kept with the job while the target still exists, so that
            # the jobs of a deleted volume or network still name it.
            named: dict[str, Any] = {}
            if job.target_name is None and job.target_id is not None:
                found = self.registry.target_names(s, [(job.target_type, job.target_id)])
                named = {"target_name": found[job.target_id]} if job.target_id in found else {}
        ctx.report = self._reporter(job_id)
        if retrying:
            self._retry_undos(kind, ctx, steps, error or "", attempts)
            return
        self._update_job(job_id, status="running", started_at=utcnow(), **named)

        was_failing = any(
            st in ("failed", "undoing", "undone", "undo_pending", "undo_failed")
            for st in steps.values()
        )
        if interrupted and was_failing:
            # The crash came during a rollback: finish it.
            redo = ("succeeded", "running", "undoing", "undo_pending")
            done = [i for i, st in steps.items() if st in redo]
            self._fail(kind, ctx, done, error or "interrupted during its rollback")
            return
        if interrupted and kind.on_interrupt == "rollback":
            done = [i for i, status in steps.items() if status in ("succeeded", "running")]
            self._fail(kind, ctx, done, "interrupted by a manager restart; rolled back")
            return
        if interrupted:
            log.info("job %s: resuming after an interruption", job_id)

        for seq, step in enumerate(kind.steps):
            if steps.get(seq) == "succeeded":
                continue
            left = (deadline - utcnow()).total_seconds()
            if left <= 0:
                error = f"job passed its deadline before step {step.name!r} could start"
                self._step_done(job_id, seq, "failed", error)
                self._fail(kind, ctx, list(range(seq)), error)
                return
            resumed = steps.get(seq) == "running"
            self._step_start(job_id, seq, "resumed after an interruption" if resumed else None)
            timeout = min(step.timeout, left)
            try:
                _call_with_timeout(step.do, ctx, timeout)
            except StepTimeout:
                which = "its step timeout" if timeout == step.timeout else "the job's deadline"
                error = (
                    f"step {step.name!r} did not finish within {timeout:.3g}s ({which}); "
                    "it is probably hung"
                )
                self._step_done(job_id, seq, "failed", error)
                self._fail(kind, ctx, list(range(seq + 1)), error)
                return
            except Exception as exc:
                error = f"step {step.name!r} failed: {_message(exc)}"
                self._step_done(job_id, seq, "failed", _message(exc))
                self._fail(kind, ctx, list(range(seq + 1)), error)
                return
            self._step_done(job_id, seq, "succeeded", None, state=ctx.state)
        self._update_job(
            job_id,
            status="succeeded",
            progress=1.0,
            finished_at=utcnow(),
            state=ctx.state,
            lease_owner=None,
            lease_expires=None,
        )

    def _fail(self, kind: JobKind, ctx: StepContext, seqs: list[int], error: str) -> None:
        """Undo the given steps in reverse order, then record the job's end (or, when an
        undo waits for a host that cannot be reached, its rollback as pending)."""
        job_id = ctx.job_id
        log.warning("job %s (%s) failed: %s", job_id, kind.name, error)
        clean, pending = True, False
        for seq in reversed(seqs):
            step: Step = kind.steps[seq]
            if step.undo is None:
                continue
            outcome = self._undo(ctx, seq, step)
            clean = clean and outcome == "undone"
            pending = pending or outcome == "undo_pending"
        if kind.on_failure is not None:
            try:
                kind.on_failure(ctx, error)
            except Exception:
                log.exception("job %s: on_failure hook failed", job_id)
        values: dict[str, Any] = {}
        if pending:
            values = {"undo_retry_at": utcnow() + timedelta(seconds=self.undo_retry[0])}
        self._update_job(
            job_id,
            status="rolled_back" if clean else "failed",
            error=error + _note(clean, pending),
            finished_at=utcnow(),
            state=ctx.state,
            lease_owner=None,
            lease_expires=None,
            undo_attempts=0,
            **values,
        )

    def _undo(self, ctx: StepContext, seq: int, step: Step) -> str:
        """Run one step's undo; answer the step's new status: ``undone``, ``undo_pending``
        (its host could not be reached: retried later) or ``undo_failed``."""
        assert step.undo is not None
        self._set_step(ctx.job_id, seq, status="undoing")
        try:
            _call_with_timeout(step.undo, ctx, step.timeout)
        except Exception as exc:
            if unreachable(exc):
                message = f"{_message(exc)} (retried when its host answers)"
                self._set_step(ctx.job_id, seq, status="undo_pending", message=message)
                return "undo_pending"
            self._set_step(ctx.job_id, seq, status="undo_failed", message=_message(exc))
            return "undo_failed"
        self._set_step(ctx.job_id, seq, status="undone")
        return "undone"

    def _retry_undos(
        self, kind: JobKind, ctx: StepContext, steps: dict[int, str], error: str, attempts: int
    ) -> None:
        """Try the pending undos of a failed job again, in reverse order. While one still
        cannot reach its host, the next try is set (the delay doubles); when none is left,
        the kind's ``on_failure`` hook marks the resource again and the job ends."""
        job_id = ctx.job_id
        attempts += 1
        base = error.split(PENDING)[0]
        log.info("job %s: retrying its pending undos (try %d)", job_id, attempts)
        outcomes = {
            seq: self._undo(ctx, seq, kind.steps[seq])
            for seq in sorted(steps, reverse=True)
            # "undoing": a manager died during an earlier try.
            if steps[seq] in ("undo_pending", "undoing") and kind.steps[seq].undo is not None
        }
        if "undo_pending" in outcomes.values():
            first, most = self.undo_retry
            delay = min(first * 2**attempts, most)
            self._update_job(
                job_id,
                undo_attempts=attempts,
                undo_retry_at=utcnow() + timedelta(seconds=delay),
                state=ctx.state,
                lease_owner=None,
                lease_expires=None,
            )
            return
        clean = "undo_failed" not in outcomes.values() and not any(
            st == "undo_failed" for seq, st in steps.items() if seq not in outcomes
        )
        if kind.on_failure is not None and not self._taken_over(job_id):
            try:
                kind.on_failure(ctx, base)
            except Exception:
                log.exception("job %s: on_failure hook failed", job_id)
        log.info("job %s: rollback finished after %d retries", job_id, attempts)
        self._update_job(
            job_id,
            status="rolled_back" if clean else "failed",
            error=base + _note(clean, False),
            finished_at=utcnow(),
            state=ctx.state,
            undo_attempts=attempts,
            undo_retry_at=None,
            lease_owner=None,
            lease_expires=None,
        )

    def _taken_over(self, job_id: str) -> bool:
        """Whether a job newer than this one is about the same resource: then the resource's
        state is that job's business, and a late rollback does not mark it again."""
        with self.db.read() as s:
            job = s.get(Job, job_id)
            if job is None or job.target_id is None:
                return False
            newer = select(Job.id).where(
                Job.target_id == job.target_id, Job.created_at > job.created_at, Job.id != job.id
            )
            return bool(s.scalar(select(exists(newer))))

    # -- recording ------------------------------------------------------------------------

    def _update_job(self, job_id: str, **values: Any) -> None:
        if not self._holds(job_id):
            raise LeaseLost(job_id)
        with self.db.write() as s:
            done = _rowcount(
                s.execute(
                    update(Job).where(Job.id == job_id, Job.lease_owner == self.id).values(**values)
                )
            )
        if not done:
            raise LeaseLost(job_id)

    def _set_step(self, job_id: str, seq: int, **values: Any) -> None:
        if not self._holds(job_id):
            raise LeaseLost(job_id)
        with self.db.write() as s:
            owner = s.scalar(select(Job.lease_owner).where(Job.id == job_id))
            if owner != self.id:
                raise LeaseLost(job_id)
            s.execute(
                update(JobStep).where(JobStep.job_id == job_id, JobStep.seq == seq).values(**values)
            )

    def _step_start(self, job_id: str, seq: int, message: str | None) -> None:
        self._set_step(
            job_id,
            seq,
            status="running",
            runner=self.id,
            started_at=utcnow(),
            finished_at=None,
            message=message,
            attempts=JobStep.attempts + 1,
        )

    def _step_done(
        self,
        job_id: str,
        seq: int,
        status: str,
        message: str | None,
        state: dict[str, Any] | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": utcnow()}
        if message is not None:
            values["message"] = message
        self._set_step(job_id, seq, **values)
        if state is not None:
            self._update_job(job_id, state=state)

    def _reporter(self, job_id: str) -> Any:
        last = [0.0]

        def report(
            fraction: float | None = None,
            bytes_done: int | None = None,
            bytes_total: int | None = None,
            rate: float | None = None,
        ) -> None:
            now = time.monotonic()
            if now - last[0] < 0.5 and fraction not in (0.0, 1.0):
                return
            last[0] = now
            values = {
                k: v
                for k, v in (
                    ("progress", fraction),
                    ("bytes_done", bytes_done),
                    ("bytes_total", bytes_total),
                    ("rate", rate),
                )
                if v is not None
            }
            if values:
                self._update_job(job_id, **values)

        return report


def _call_with_timeout(fn: Any, ctx: StepContext, timeout: float) -> None:
    """Run ``fn(ctx)`` in a thread; raise StepTimeout if it outlives ``timeout``.

    A hung step's thread cannot be killed in Python; it is left behind (daemon) and the job
    moves on to its rollback, which is what keeps resources out of transitional states."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            fn(ctx)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True, name=f"step-{ctx.job_id[:8]}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StepTimeout()
    if outcome and outcome[0] is not None:
        raise outcome[0]


def machine_boot() -> str:
    """This machine in this boot: pids mean something only within one boot of one machine."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "noboot"
    return f"{socket.gethostname()}/{boot}"


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (``Session.execute`` is typed as returning a plain Result)."""
    return int(result.rowcount)


def process_alive(runner_id: str) -> bool:
    """Whether the process a runner id names still exists (ids of other machines or boots
    count as alive: only their lease or silence can tell)."""
    if not runner_id.startswith(machine_boot() + ":"):
        return True
    return _process_alive(runner_id)


def _process_alive(runner_id: str) -> bool:
    try:
        pid = int(runner_id.split(":")[1])
        os.kill(pid, 0)
    except (IndexError, ValueError):
        return True  # not one of ours: let its lease run out
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says a host could not be reached (so trying again later may work),
    rather than that it refused or failed the request."""
    return isinstance(exc, (BackendUnavailable, httpx.TransportError, ConnectionError))


def _note(clean: bool, pending: bool) -> str:
    if pending:
        return PENDING
    return "" if clean else INCOMPLETE


def _message(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__
