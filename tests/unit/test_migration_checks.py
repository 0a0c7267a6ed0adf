"""What ``lamina instance migrate`` refuses before anything moves (each a clear 4xx naming
what is wrong), what it queues when it accepts, and the pure parts of the job: the
watchdog's downtime steps, the transport's URIs and the figures of the result.

Written by helper ``sched`` beside the ``migrate`` branch (which had no unit tests): skipped
until ``lamina.compute.migration`` is merged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from harness import bare_services

from lamina.compute.models import Host, Instance
from lamina.db.types import utcnow
from lamina.errors import (
    Forbidden,
    HostFull,
    InvalidRequest,
    InvalidState,
    NoCapacity,
    NotFound,
)
from lamina.identity.principal import Principal
from lamina.services import Services

migration = pytest.importorskip("lamina.compute.migration")

ADMIN = Principal("u-admin", "admin", "admin")
ALICE = Principal("u-alice", "alice", "member")


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    with services.db.write() as s:
        for name, status, memory in (("h1", "up", 4096), ("h2", "up", 4096), ("h3", "up", 1024)):
            s.add(
                Host(
                    id=name, name=name, address=f"10.9.0.{name[1]}:8776", status=status,
                    vcpus=4, memory_mib=memory, reserved_memory_mib=0, domain_type="qemu",
                    cert_fingerprint="f" * 64,
                )
            )  # fmt: skip
        s.add(Instance(id="i-web", name="web", owner=ALICE.user_id, host_id="h1", vcpus=1,
                       memory_mib=512, status="running"))  # fmt: skip
        s.add(Instance(id="i-cold", name="cold", owner=ALICE.user_id, host_id="h1", vcpus=1,
                       memory_mib=512, status="stopped"))  # fmt: skip
    yield services
    services.close()


def queue(svc: Services, ref: str, host: str | None = None, mode: str = "auto",
          who: Principal = ADMIN) -> Any:  # fmt: skip
    with svc.db.write() as s:
        job = migration.queue_migration(s, svc, who, ref, host, mode)
        return SimpleNamespace(kind=job.kind, params=dict(job.params), target=job.target_id)


def set_host(svc: Services, name: str, **values: Any) -> None:
    with svc.db.write() as s:
        host = s.get(Host, name)
        for key, value in values.items():
            setattr(host, key, value)


def set_instance(svc: Services, ref: str, **values: Any) -> None:
    with svc.db.write() as s:
        instance = s.get(Instance, ref)
        for key, value in values.items():
            setattr(instance, key, value)


# -- accepted --------------------------------------------------------------------------------


def test_a_running_instance_moves_live_to_the_other_roomy_host(svc: Services) -> None:
    job = queue(svc, "web")
    assert job.kind == "instance.migrate" and job.target == "i-web"
    assert job.params["source_id"] == "h1" and job.params["dest_id"] == "h2"  # h2 is roomier
    assert job.params["live"] is True and job.params["restart"] is False


def test_cold_moves(svc: Services) -> None:
    stopped = queue(svc, "cold")
    assert stopped.params["live"] is False and stopped.params["restart"] is False
    running = queue(svc, "web", "h3", mode="cold")
    assert running.params["live"] is False and running.params["restart"] is True
    assert running.params["dest_id"] == "h3"


def test_a_group_spreads_when_it_moves(svc: Services) -> None:
    """As at creation: the host with fewest of the group's members first (needs the move to
    ask ``scheduler.check_destination``, which passes the instance's group)."""
    set_instance(svc, "i-web", group_name="g")
    with svc.db.write() as s:
        s.add(Instance(name="web2", owner=ALICE.user_id, host_id="h2", vcpus=1, memory_mib=64,
                       status="running", group_name="g"))  # fmt: skip
    assert queue(svc, "web").params["dest_id"] == "h3"  # not the roomier h2


def test_a_named_destination_is_taken(svc: Services) -> None:
    assert queue(svc, "web", "h3").params["dest_id"] == "h3"


# -- refused, before anything moves ------------------------------------------------------------


def test_members_may_not_move_instances(svc: Services) -> None:
    with pytest.raises(Forbidden, match="administrators"):
        queue(svc, "web", who=ALICE)


def test_an_unknown_mode_or_instance(svc: Services) -> None:
    with pytest.raises(InvalidRequest, match="mode must be one of auto, live, cold"):
        queue(svc, "web", mode="warp")
    with pytest.raises(NotFound, match="instance 'nope'"):
        queue(svc, "nope")


@pytest.mark.parametrize("status", ["building", "error", "deleting"])
def test_an_instance_in_the_wrong_state(svc: Services, status: str) -> None:
    set_instance(svc, "i-web", status=status)
    with pytest.raises(InvalidState, match=f"it is {status}") as err:
        queue(svc, "web")
    assert err.value.status == 409


def test_live_needs_a_running_guest(svc: Services) -> None:
    with pytest.raises(InvalidState, match="cannot live-migrate instance 'cold': it is stopped"):
        queue(svc, "cold", mode="live")


def test_an_instance_with_a_job_running(svc: Services) -> None:
    first = queue(svc, "web")
    with pytest.raises(InvalidState, match="job in progress") as err:
        queue(svc, "web")
    assert first.kind in err.value.message


def test_the_source_must_answer(svc: Services) -> None:
    set_host(svc, "h1", status="down")
    with pytest.raises(InvalidState, match="host 'h1', which is down"):
        queue(svc, "web")


def test_a_disabled_source_still_lets_its_instances_go(svc: Services) -> None:
    set_host(svc, "h1", disabled_at=utcnow(), disabled_reason="DIMM")
    assert queue(svc, "web").params["dest_id"] == "h2"


def test_the_same_host(svc: Services) -> None:
    with pytest.raises(InvalidRequest, match="already on host 'h1'") as err:
        queue(svc, "web", "h1")
    assert err.value.status == 400


def test_an_unknown_destination(svc: Services) -> None:
    with pytest.raises(NotFound, match="host 'h9' does not exist") as err:
        queue(svc, "web", "h9")
    assert err.value.status == 404


def test_a_down_or_disabled_destination(svc: Services) -> None:
    set_host(svc, "h2", status="down")
    with pytest.raises(InvalidState, match="host 'h2' is down") as err:
        queue(svc, "web", "h2")
    assert err.value.status == 409
    set_host(svc, "h2", status="up", disabled_at=utcnow(), disabled_reason="DIMM")
    with pytest.raises(InvalidState, match=r"host 'h2' is disabled \(DIMM\)"):
        queue(svc, "web", "h2")
    # Nor does the scheduler choose it: h3 is the only other host.
    assert queue(svc, "web").params["dest_id"] == "h3"


def test_a_full_destination(svc: Services) -> None:
    set_instance(svc, "i-web", memory_mib=2048)
    with pytest.raises(HostFull, match="host 'h3' has no room for 1 vCPU.* 2048 MiB") as err:
        queue(svc, "web", "h3")
    assert err.value.status == 409


def test_no_other_host(svc: Services) -> None:
    for name in ("h2", "h3"):
        set_host(svc, name, status="down")
    with pytest.raises(NoCapacity, match="no other host is up"):
        queue(svc, "web")


def test_another_kind_of_hypervisor(svc: Services) -> None:
    set_host(svc, "h2", domain_type="kvm")
    with pytest.raises(InvalidState, match="host 'h2' runs kvm guests, 'h1' qemu"):
        queue(svc, "web", "h2")


def test_two_moves_at_once_cannot_both_take_the_last_room(svc: Services) -> None:
    """The scheduler counts a queued move on its destination (by the job's ``dest_id``)."""
    set_instance(svc, "i-cold", memory_mib=600)
    queue(svc, "web", "h3")  # 512 of h3's 1024 MiB
    with pytest.raises(HostFull, match="host 'h3' has no room .* 512 MiB free"):
        queue(svc, "cold", "h3")


# -- the job's pure parts ---------------------------------------------------------------------


def test_the_watchdog_steps_the_downtime_up_over_half_the_deadline() -> None:
    dog = migration.Watchdog(300, 2000, 5, 100.0)  # a step every 10 s
    assert [dog.downtime(t) for t in (0, 9.9, 10, 20, 49.9, 50, 99)] == [
        300, 300, 640, 980, 1660, 2000, 2000,
    ]  # fmt: skip
    assert migration.Watchdog(300, 2000, 0, 100.0).downtime(90) == 300  # no steps
    assert migration.Watchdog(500, 100, 5, 100.0).downtime(90) == 500  # top below start


class _Agent:
    def __init__(self, uri: str | None) -> None:
        self.uri = uri

    def info(self) -> Any:
        return SimpleNamespace(migration_uri=self.uri)


def test_the_transport() -> None:
    dest = Host(name="h2", address="10.9.0.2:8776")
    tcp = migration.transport("tcp", _Agent(None), dest)
    assert tcp == ("qemu+tcp://10.9.0.2/system", "tcp://10.9.0.2", False)
    tls = migration.transport("tls", _Agent("qemu+tls://h2.example/system"), dest)
    assert tls == ("qemu+tls://h2.example/system", "tcp://h2.example", True)
    with pytest.raises(InvalidState, match="host h2 reports no migration URI"):
        migration.transport("tls", _Agent(None), dest)


def test_the_result_adds_up_the_bytes_moved() -> None:
    ctx = SimpleNamespace(
        params={"live": True},
        state={"memory_bytes": 300, "disk_bytes": 20, "layer_bytes": 0, "seconds": 1.5,
               "downtime_ms": 42},
    )  # fmt: skip
    migration._result(ctx, "h2")
    assert ctx.state["result"] == {
        "host": "h2", "mode": "live", "seconds": 1.5, "downtime_ms": 42, "memory_bytes": 300,
        "disk_bytes": 20, "layer_bytes": 0, "bytes_moved": 320,
    }  # fmt: skip
