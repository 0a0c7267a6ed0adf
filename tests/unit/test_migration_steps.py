"""The steps of ``instance.migrate`` on the manager against recording agents: the migration
watched (progress, the allowed downtime stepped up, aborted at the deadline with the guest
still on its source, a failure's reason kept, a resumed step finding the guest arrived),
the switch recorded, and after a failure the instance found where its guest really runs.

Written by helper ``sched`` beside the ``migrate`` branch (which had no unit tests): skipped
until ``lamina.compute.migration`` is merged. Real hosts and guests: the migration
integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import bare_services

from lamina.compute.models import Host, Instance
from lamina.errors import BackendUnavailable, GuestNotFound, LaminaError
from lamina.jobs.kinds import StepContext
from lamina.services import Services

migration = pytest.importorskip("lamina.compute.migration")
protocol = pytest.importorskip("lamina.wire.protocol")
MIB = 1024 * 1024


class Agent:
    """One host's agent as the steps see it: a scripted migration on the source, a guest
    that is here, incoming, or absent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[Any, ...]] = []
        self.statuses: list[Any] = []  # what migration_status answers, in turn (last repeats)
        self.presence: str | None = None  # incoming_status: "incoming", "arrived" or absent
        self.state = "running"  # the guest's state here
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable(f"{self.name} is down")

    def migration_status(self, name: str) -> Any:
        self._check()
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return status

    def migration_start(self, name: str, req: Any) -> Any:
        self.calls.append(("start", req.dest_uri, req.migrate_uri, req.tls, req.max_downtime_ms))
        return self.migration_status(name)

    def migration_tune(self, name: str, ms: int) -> Any:
        self.calls.append(("tune", ms))
        status = self.migration_status(name)
        return status.model_copy(update={"max_downtime_ms": ms})

    def migration_abort(self, name: str) -> None:
        self.calls.append(("abort",))

    def incoming_status(self, name: str) -> str:
        self._check()
        if self.presence is None:
            raise GuestNotFound(name)
        return self.presence

    def incoming_remove(self, name: str) -> None:
        self.calls.append(("incoming_remove",))
        self.presence = None

    def incoming_finish(self, name: str) -> Any:
        self.calls.append(("finish",))
        return protocol.MigrationStatus(state="completed", downtime_ms=87, memory_processed=9)

    def guest(self, name: str) -> Any:
        self._check()
        return protocol.GuestStatus(
            name=name, state=self.state, vcpus=1, memory_mib=256, uptime_seconds=0
        )

    def act(self, name: str, action: str) -> Any:
        self.calls.append(("act", action))
        self.state = {"destroy": "stopped", "start": "running", "stop": "stopped"}[action]
        return self.guest(name)


class Agents:
    def __init__(self) -> None:
        self.by_name = {"h1": Agent("h1"), "h2": Agent("h2")}

    def for_host(self, host: Host) -> Agent:
        return self.by_name[host.name]

    def close(self) -> None:
        pass


def running(**figures: Any) -> Any:
    return protocol.MigrationStatus(state="running", **figures)


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(
        tmp_path, monkeypatch,
        migration={"transport": "tcp", "deadline_seconds": 0.6, "downtime_ms": 300,
                   "max_downtime_ms": 900, "downtime_steps": 2},
    )  # fmt: skip
    services.agents = Agents()  # type: ignore[assignment]
    monkeypatch.setattr(migration, "POLL", 0.01)
    with services.db.write() as s:
        for n in (1, 2):
            s.add(Host(id=f"h{n}", name=f"h{n}", address=f"10.9.0.{n}:8776", status="up",
                       vcpus=4, memory_mib=4096, cert_fingerprint="f" * 64))  # fmt: skip
        s.add(Instance(id="i-web", name="web", owner="u", host_id="h1", vcpus=1,
                       memory_mib=256, status="running"))  # fmt: skip
    yield services
    services.close()


def agent(svc: Services, name: str) -> Agent:
    found = svc.agents.by_name[name]  # type: ignore[attr-defined]
    assert isinstance(found, Agent)
    return found


def context(svc: Services, live: bool = True, restart: bool = False) -> StepContext:
    reports: list[dict[str, Any]] = []
    ctx = StepContext(
        job_id="j-1",
        params={"instance_id": "i-web", "source_id": "h1", "dest_id": "h2", "live": live,
                "restart": restart, "shared": False},
        state={"xml": "<domain/>", "copy_disks": ["vdb"]},
        services=svc,
        report=lambda **kw: reports.append(kw),
    )  # fmt: skip
    ctx.reports = reports  # type: ignore[attr-defined]
    return ctx


def stored(svc: Services) -> Instance:
    with svc.db.read() as s:
        found = s.get(Instance, "i-web")
        assert found is not None
        s.expunge(found)
        return found


def test_a_migration_that_completes(svc: Services) -> None:
    src = agent(svc, "h1")
    src.statuses = [
        protocol.MigrationStatus(state="none"),
        running(memory_total=256 * MIB, memory_remaining=200 * MIB, max_downtime_ms=300),
        running(memory_total=256 * MIB, memory_remaining=10 * MIB, max_downtime_ms=300),
        protocol.MigrationStatus(
            state="completed",
            memory_total=256 * MIB,
            memory_processed=260 * MIB,
            disk_processed=MIB,
        ),  # fmt: skip
    ]
    ctx = context(svc)
    migration.migrate(ctx)
    assert src.calls[0] == ("start", "qemu+tcp://10.9.0.2/system", "tcp://10.9.0.2", False, 300)
    assert ctx.state["moved"] is True
    assert ctx.state["memory_bytes"] == 260 * MIB and ctx.state["disk_bytes"] == MIB
    assert ctx.state["result"]["bytes_moved"] == 261 * MIB
    fractions = [r["fraction"] for r in ctx.reports]  # type: ignore[attr-defined]
    assert fractions == sorted(fractions) and 0.1 <= fractions[0] and fractions[-1] <= 0.9


def test_the_watchdog_raises_the_downtime_then_the_deadline_aborts(svc: Services) -> None:
    src = agent(svc, "h1")
    src.statuses = [
        protocol.MigrationStatus(state="none"),
        running(
            memory_total=256 * MIB, memory_remaining=100 * MIB, dirty_rate=5000, max_downtime_ms=300
        ),  # fmt: skip
    ]
    ctx = context(svc)
    with pytest.raises(LaminaError) as err:
        migration.migrate(ctx)
    tunes = [c[1] for c in src.calls if c[0] == "tune"]
    assert tunes and tunes[-1] == 900 and tunes == sorted(tunes)  # stepped up to the top
    assert src.calls[-1] == ("abort",)
    assert err.value.details["reason"] == "not_converged"
    assert "did not converge within 0.6s" in err.value.message
    assert "still runs on h1" in err.value.message
    assert "moved" not in ctx.state


def test_a_failed_migration_keeps_its_reason(svc: Services) -> None:
    agent(svc, "h1").statuses = [
        protocol.MigrationStatus(state="none"),
        protocol.MigrationStatus(state="failed", error="unable to connect to h2:49152"),
    ]
    with pytest.raises(LaminaError, match="unable to connect to h2:49152;.*still runs on h1"):
        migration.migrate(context(svc))


def test_a_resumed_step_finds_the_guest_arrived(svc: Services) -> None:
    src, dst = agent(svc, "h1"), agent(svc, "h2")
    src.statuses = [protocol.MigrationStatus(state="none")]
    dst.presence = "arrived"
    ctx = context(svc)
    migration.migrate(ctx)
    assert ctx.state["moved"] is True
    assert not [c for c in src.calls if c[0] == "start"]  # not started again


def test_the_switch_records_the_new_host(svc: Services) -> None:
    ctx = context(svc)
    migration.switch(ctx)
    instance = stored(svc)
    assert instance.host_id == "h2" and instance.status == "running"
    assert ctx.state["downtime_ms"] == 87 and ctx.state["result"]["host"] == "h2"


def test_a_cold_switch_powers_off_and_starts_again_when_it_ran(svc: Services) -> None:
    dst = agent(svc, "h2")
    dst.state = "paused"  # a cold move arrives paused
    migration.switch(context(svc, live=False, restart=True))
    assert [c for c in dst.calls if c[0] == "act"] == [("act", "destroy"), ("act", "start")]
    assert stored(svc).status == "running"
    dst.state = "paused"
    dst.calls.clear()
    migration.switch(context(svc, live=False, restart=False))
    assert [c for c in dst.calls if c[0] == "act"] == [("act", "destroy")]
    assert stored(svc).status == "stopped"


def hosts(svc: Services) -> tuple[Instance, Host, Host]:
    with svc.db.read() as s:
        found = (s.get(Instance, "i-web"), s.get(Host, "h1"), s.get(Host, "h2"))
        for row in found:
            s.expunge(row)
    return found  # type: ignore[return-value]


def test_locate_after_a_failure(svc: Services) -> None:
    src, dst = agent(svc, "h1"), agent(svc, "h2")
    # Still on the source, an incoming leftover on the destination: that goes.
    src.presence, dst.presence, dst.state = "arrived", "incoming", "paused"
    where, state = migration.locate(svc, *hosts(svc))
    assert (where.name, state) == ("h1", "running")
    assert ("incoming_remove",) in dst.calls
    # Arrived and running on the destination (the source's copy gone).
    src.presence, dst.presence, dst.state = None, "arrived", "running"
    where, state = migration.locate(svc, *hosts(svc))
    assert (where.name, state) == ("h2", "running")
    # The destination does not answer: the source is asked alone.
    src.presence, dst.down = "arrived", True
    where, state = migration.locate(svc, *hosts(svc))
    assert (where.name, state) == ("h1", "running")
    # Neither answers: nobody knows.
    src.down = True
    assert migration.locate(svc, *hosts(svc)) == (None, None)


def test_settle_records_where_the_guest_runs_and_the_error(svc: Services) -> None:
    src, dst = agent(svc, "h1"), agent(svc, "h2")
    src.presence, src.state = None, "stopped"
    dst.presence, dst.state = "arrived", "running"
    migration.settle(context(svc), "the switch failed")
    instance = stored(svc)
    assert instance.host_id == "h2" and instance.status == "running"
    assert instance.error == "the switch failed"
