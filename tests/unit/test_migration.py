"""Moving instances between hosts, with real agents over fake hypervisors (``tests/fakes``):
what is checked before anything moves, what each host is asked to do, the watchdog and the
deadline, a cold move, an evacuation. The real thing: tests/integration/test_migration.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.agents import FakeHost, InProcessAgents
from harness import bare_services

from lamina.agent.drivers.fake import FakeHypervisor
from lamina.compute.migration import Watchdog, evacuate_host, migrate_instance
from lamina.compute.models import Host, Instance
from lamina.errors import Forbidden, InvalidRequest, InvalidState, NoCapacity, NotFound
from lamina.identity.principal import Principal
from lamina.jobs.models import FINISHED, Job
from lamina.jobs.runner import JobRunner
from lamina.services import Services
from lamina.wire.protocol import DiskCreate, GuestDefinition, GuestDisk

ADMIN = Principal("root", "admin", "admin")
ALICE = Principal("u-alice", "alice", "member")
HOSTS = {"h1": "10.0.0.1", "h2": "10.0.0.2", "h3": "10.0.0.3"}
UPPER_BYTES = 8 * 1024 * 1024


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(
        tmp_path, monkeypatch, migration={"transport": "tcp", "deadline_seconds": 3}
    )
    agents = InProcessAgents(tmp_path / "hosts", services.deployment)
    services.agents = agents  # type: ignore[assignment]
    with services.db.write() as s:
        for name, address in HOSTS.items():
            s.add(
                Host(
                    id=name, name=name, address=f"{address}:7000", cert_fingerprint="x",
                    status="down" if name == "h3" else "up", vcpus=8, memory_mib=16384,
                    domain_type="test",
                )
            )  # fmt: skip
    for name, address in HOSTS.items():
        agents.host(name, f"{address}:7000").hypervisor.reachable_at(address)
    try:
        yield services
    finally:
        FakeHypervisor.peers.clear()
        services.close()
        agents.close()


def host(svc: Services, name: str) -> FakeHost:
    agents: Any = svc.agents
    found: FakeHost = agents.host(name, f"{HOSTS[name]}:7000")
    return found


def layered(svc: Services, name: str = "web", state: str = "running") -> Instance:
    """A layered instance on h1 as its create job leaves it: an instance layer and a config
    disk made by h1's agent, its guest defined (and started)."""
    instance = Instance(name=name, owner=ALICE.user_id, host_id="h1", status=state, vcpus=1,
                        memory_mib=256, layers=[], disk_size_bytes=UPPER_BYTES)  # fmt: skip
    with svc.db.write() as s:
        s.add(instance)
        s.flush()
        s.expunge(instance)
    agent = host(svc, "h1").client
    guest = instance.domain_name
    agent.disk_create(DiskCreate(guest=guest, name="upper", size_bytes=UPPER_BYTES, format="raw"))
    agent.disk_create(DiskCreate(guest=guest, name="config", format="raw", files={"a": "b\n"}))
    disks = [
        GuestDisk(name="upper", format="raw", serial="upper"),
        GuestDisk(name="config", format="raw", readonly=True, serial="config"),
    ]
    agent.define(guest, GuestDefinition(vcpus=1, memory_mib=256, disks=disks))
    if state == "running":
        agent.act(guest, "start")
    return instance


def run_jobs(svc: Services) -> list[Job]:
    runner = JobRunner(svc.db, svc.jobs, svc, workers=1, lease_seconds=30, runner_id="unit:1:x")
    done = []
    while (job_id := runner.claim()) is not None:
        runner.run(job_id)
        with svc.db.read() as s:
            job = s.get(Job, job_id)
            assert job is not None
            done.append(job)
    return done


def where(svc: Services, instance: Instance) -> tuple[str | None, str]:
    with svc.db.read() as s:
        found = s.get(Instance, instance.id)
        assert found is not None
        return found.host_id, found.status


def guests(svc: Services, name: str) -> dict[str, str]:
    return {n: g.state for n, g in host(svc, name).hypervisor.guests.items()}


def test_a_running_layered_instance_moves_with_its_instance_layer(svc: Services) -> None:
    web = layered(svc)
    migrate_instance(svc, ADMIN, "web", host="h2")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    assert where(svc, web) == ("h2", "running")
    assert guests(svc, "h2") == {web.domain_name: "running"} and guests(svc, "h1") == {}
    [request] = host(svc, "h1").hypervisor.migrations
    # The instance layer is copied by the hypervisor (NBD); the config disk, read-only, is
    # made again on the destination from its files; plain TCP only because the test says so.
    assert request.copy_disks == ("vda",)
    assert (request.dest_uri, request.migrate_uri) == (
        "qemu+tcp://10.0.0.2/system",
        "tcp://10.0.0.2",
    )
    assert not request.tls and request.auto_converge and not request.paused
    h2 = host(svc, "h2").agent.disks
    assert h2.info(web.domain_name, "upper").size_bytes == UPPER_BYTES
    assert h2.disk_path(web.domain_name, "config").is_file()
    assert str(h2.root) in request.xml and str(host(svc, "h1").agent.disks.root) not in request.xml
    assert not host(svc, "h1").agent.disks.guest_dir(web.domain_name).exists()
    assert job.state["result"]["host"] == "h2"
    assert job.state["result"]["downtime_ms"] == 42


def test_everything_is_refused_before_anything_moves(svc: Services) -> None:
    layered(svc)
    layered(svc, "idle", state="stopped")
    refusals: list[tuple[type[Exception], Any]] = [
        (Forbidden, lambda: migrate_instance(svc, ALICE, "web", host="h2")),
        (NotFound, lambda: migrate_instance(svc, ADMIN, "web", host="nowhere")),
        (InvalidRequest, lambda: migrate_instance(svc, ADMIN, "web", host="h1")),
        (InvalidState, lambda: migrate_instance(svc, ADMIN, "web", host="h3")),  # down
        (InvalidState, lambda: migrate_instance(svc, ADMIN, "idle", mode="live")),
        (InvalidRequest, lambda: migrate_instance(svc, ADMIN, "web", mode="teleport")),
        (NotFound, lambda: migrate_instance(svc, ADMIN, "ghost")),
    ]
    for error, call in refusals:
        with pytest.raises(error):
            call()
    with svc.db.write() as s:
        full = s.get(Host, "h2")
        assert full is not None
        full.memory_mib = 256  # the reserve alone fills it
    with pytest.raises(NoCapacity):
        migrate_instance(svc, ADMIN, "web", host="h2")
    with svc.db.read() as s:
        assert s.query(Job).count() == 0
    assert host(svc, "h1").hypervisor.migrations == []


def test_a_second_move_waits_for_the_first(svc: Services) -> None:
    layered(svc)
    migrate_instance(svc, ADMIN, "web")
    with pytest.raises(InvalidState, match="in progress"):
        migrate_instance(svc, ADMIN, "web")


def test_a_migration_that_cannot_converge_is_aborted_on_the_source(svc: Services) -> None:
    web = layered(svc)
    h1 = host(svc, "h1").hypervisor
    h1.stall_migrations = True
    migrate_instance(svc, ADMIN, "web", host="h2", mode="live")
    [job] = run_jobs(svc)
    assert job.status == "rolled_back"
    assert (
        job.error and "did not converge within 3s" in job.error and "still runs on h1" in job.error
    )
    assert where(svc, web) == ("h1", "running")
    assert guests(svc, "h1") == {web.domain_name: "running"}
    assert guests(svc, "h2") == {}  # what the destination had made is gone
    assert not host(svc, "h2").agent.disks.guest_dir(web.domain_name).exists()
    assert h1.downtimes and h1.downtimes == sorted(h1.downtimes)  # stepped up, never down


def test_a_stopped_instance_moves_cold_and_stays_stopped(svc: Services) -> None:
    idle = layered(svc, "idle", state="stopped")
    migrate_instance(svc, ADMIN, "idle")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    assert where(svc, idle) == ("h2", "stopped")
    assert guests(svc, "h2") == {idle.domain_name: "stopped"}
    [request] = host(svc, "h1").hypervisor.migrations
    assert request.paused  # started paused on the source: it never ran
    assert job.state["result"]["mode"] == "cold"


def test_a_cold_move_of_a_running_instance_starts_it_again_there(svc: Services) -> None:
    web = layered(svc)
    migrate_instance(svc, ADMIN, "web", mode="cold")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    assert where(svc, web) == ("h2", "running")
    calls = [c for c in host(svc, "h1").hypervisor.calls if c[0] in ("shutdown", "start")]
    assert calls[-2:] == [("shutdown", web.domain_name), ("start", web.domain_name)]
    [request] = host(svc, "h1").hypervisor.migrations
    assert request.paused


def test_the_move_hooks_run_around_the_switch(svc: Services) -> None:
    web = layered(svc)
    seen: list[tuple[str, str, str, str | None]] = []

    def hook(label: str) -> Any:
        def record(services: Any, instance: Instance, source: Host, dest: Host) -> None:
            with services.db.read() as s:
                now = s.get(Instance, instance.id)
            seen.append((label, source.name, dest.name, now.host_id if now else None))

        return record

    svc.lifecycle.before_move.append(hook("before"))
    svc.lifecycle.after_move.append(hook("after"))
    migrate_instance(svc, ADMIN, "web", host="h2")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    assert seen == [("before", "h1", "h2", "h1"), ("after", "h1", "h2", "h2")]
    assert where(svc, web)[0] == "h2"


def test_every_step_can_run_again(svc: Services) -> None:
    """A manager restarted mid-job runs the step it was in again: each one finds its work
    done (or does it again) without harm."""
    from lamina.compute import migration
    from lamina.jobs.kinds import StepContext

    web = layered(svc)
    migrate_instance(svc, ADMIN, "web", host="h2")
    with svc.db.read() as s:
        job = s.query(Job).one()
        params = dict(job.params)
    ctx = StepContext(job.id, params, {}, svc)
    for step in svc.jobs.get("instance.migrate").steps:
        step.do(ctx)
        step.do(ctx)
    assert guests(svc, "h2") == {web.domain_name: "running"} and guests(svc, "h1") == {}
    assert where(svc, web) == ("h2", "running")
    assert migration.locate(svc, web, *_hosts(svc))[0] is not None


def _hosts(svc: Services) -> tuple[Host, Host]:
    with svc.db.read() as s:
        h1, h2 = s.get(Host, "h1"), s.get(Host, "h2")
    assert h1 is not None and h2 is not None
    return h1, h2


def test_a_paused_incoming_leftover_is_removed_and_the_source_kept(svc: Services) -> None:
    from lamina.compute.migration import locate

    web = layered(svc)
    h2 = host(svc, "h2")
    # What a migration killed half-way leaves: the guest paused, waiting, on h2.
    h2.hypervisor.guests[web.domain_name] = dict(host(svc, "h1").hypervisor.guests)[
        web.domain_name
    ].__class__(host(svc, "h1").hypervisor.guests[web.domain_name].spec, "paused", incoming=True)
    found, state = locate(svc, web, *_hosts(svc))
    assert (found.name if found else None, state) == ("h1", "running")
    assert guests(svc, "h2") == {}


def test_evacuation_moves_everything_and_says_what_could_not(svc: Services) -> None:
    web = layered(svc)
    idle = layered(svc, "idle", state="stopped")
    broken = layered(svc, "broken", state="stopped")
    with svc.db.write() as s:
        found = s.get(Instance, broken.id)
        assert found is not None
        found.status = "error"
    with pytest.raises(Forbidden):
        evacuate_host(svc, ALICE, "h1")
    job_id = evacuate_host(svc, ADMIN, "h1")["job"]["id"]
    # The evacuation waits for each move's own job: runners with two slots, as a manager's.
    runner = JobRunner(svc.db, svc.jobs, svc, workers=2, poll_interval=0.05, runner_id="unit:1:y")
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with svc.db.read() as s:
                evacuation = s.get(Job, job_id)
                assert evacuation is not None
                if evacuation.status in FINISHED:
                    break
            time.sleep(0.1)
    finally:
        runner.stop()
    assert evacuation is not None
    assert evacuation.status == "succeeded", evacuation.error
    report = {r["name"]: r for r in evacuation.state["result"]["report"]}
    assert report["web"]["outcome"] == "moved" and report["web"]["host"] == "h2"
    assert report["idle"]["outcome"] == "moved" and report["idle"]["mode"] == "cold"
    assert report["broken"]["outcome"] == "not moved"
    assert "it is error" in report["broken"]["reason"]
    assert evacuation.state["result"]["summary"] == "2 of 3 instance(s) moved"
    assert where(svc, web) == ("h2", "running") and where(svc, idle) == ("h2", "stopped")


def test_the_watchdog_steps_the_downtime_up_over_half_the_deadline() -> None:
    dog = Watchdog(300, 2000, 5, 100)
    assert [dog.downtime(t) for t in (0, 9.9, 10, 30, 49, 50, 99)] == [
        300, 300, 640, 1320, 1660, 2000, 2000,
    ]  # fmt: skip
    assert Watchdog(300, 300, 5, 100).downtime(99) == 300


def _volume_on_h1(svc: Services, instance: Instance) -> str:
    """A volume served by h1's agent, exported to h1 and attached to ``instance``."""
    from lamina.volumes.models import Attachment, Volume
    from lamina.wire.protocol import VolumeCreate

    volume = "vol-0123456789abcdef"
    server = host(svc, "h1").volumes
    server.create(VolumeCreate(volume=volume, size_bytes=1024 * 1024))
    exported = server.export(volume, HOSTS["h1"])
    with svc.db.write() as s:
        s.add(Volume(id=volume, owner=ALICE.user_id, size_bytes=1024 * 1024, status="in-use",
                     host_id="h1", backend="fake", export_format="raw"))  # fmt: skip
        s.flush()
        s.add(
            Attachment(volume_id=volume, instance_id=instance.id, device="vdc", iqn=exported.iqn,
                       lun=1, portal=exported.portal, status="attached")
        )  # fmt: skip
    return volume


def test_an_attached_volume_is_exported_to_the_destination_and_withdrawn_from_the_source(
    svc: Services,
) -> None:
    web = layered(svc)
    volume = _volume_on_h1(svc, web)
    server = host(svc, "h1").volumes
    seen: list[list[str]] = []
    svc.lifecycle.before_move.append(lambda *_: seen.append(list(server.acls[volume])))
    migrate_instance(svc, ADMIN, "web", host="h2")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    # Both hosts' initiators while it moved; the destination's alone after.
    assert seen == [[HOSTS["h1"], HOSTS["h2"]]]
    assert server.acls[volume] == [HOSTS["h2"]]
    assert server.export_records[volume].initiator_address == HOSTS["h2"]


def test_a_move_rolled_back_lets_the_destination_go_again(svc: Services) -> None:
    web = layered(svc)
    volume = _volume_on_h1(svc, web)
    host(svc, "h1").hypervisor.stall_migrations = True
    migrate_instance(svc, ADMIN, "web", host="h2")
    [job] = run_jobs(svc)
    assert job.status == "rolled_back"
    assert host(svc, "h1").volumes.acls[volume] == [HOSTS["h1"]]


def test_reconcile_finds_a_guest_a_killed_migration_left_and_where_it_runs(
    svc: Services,
) -> None:
    """No job is left to finish the move (its record lost): reconcile asks every host."""
    from lamina.agent.drivers.fake import FakeGuest
    from lamina.compute.reconcile import apply_fixes, find_differences

    web = layered(svc)
    h1, h2 = host(svc, "h1").hypervisor, host(svc, "h2").hypervisor
    spec = h1.guests[web.domain_name].spec
    # Killed before the switch: a paused incoming half on h2, the guest still runs on h1.
    h2.guests[web.domain_name] = FakeGuest(spec, "paused", incoming=True)
    [diff] = find_differences(svc)
    assert (diff.kind, diff.backend) == ("migration_leftover", "paused incoming on h2")
    [done] = apply_fixes(find_differences(svc), [diff.id])
    assert done["outcome"] == "fixed" and guests(svc, "h2") == {}
    assert guests(svc, "h1") == {web.domain_name: "running"}

    # Killed after the switch, before the record: it runs on h2, h1 has none.
    h2.guests[web.domain_name] = h1.guests.pop(web.domain_name)
    [diff] = find_differences(svc)
    assert (diff.kind, diff.fix) == ("instance_elsewhere", "record the instance on h2 as running")
    apply_fixes(find_differences(svc), [diff.id])
    assert where(svc, web) == ("h2", "running")
    assert find_differences(svc) == []


def test_a_source_agent_that_does_not_answer_for_a_while_is_asked_again(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent restarted mid-move (libvirtd carries the migration on meanwhile)."""
    from lamina.errors import BackendUnavailable

    web = layered(svc)
    client = host(svc, "h1").client
    real = client.migration_status
    failures = [BackendUnavailable("agent at 10.0.0.1:7000 failed: peer closed connection")]

    def flaky(name: str) -> Any:
        if failures:
            raise failures.pop()
        return real(name)

    monkeypatch.setattr(client, "migration_status", flaky)
    migrate_instance(svc, ADMIN, "web", host="h2")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    assert failures == [] and where(svc, web) == ("h2", "running")
