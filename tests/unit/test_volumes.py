"""The volume service's states and its jobs' rollback, against in-process agents.

The agents are the real agent over the fake hypervisor and volume backend of ``tests/fakes``
(unit tests only: no daemon, no socket), behind a layer that fails the procedure a test
names. A failure injected at each step of attach and detach must leave every earlier step
undone and the volume in the state it had.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fakes.agents import FakeHost, InProcessAgents
from harness import bare_services
from sqlalchemy.exc import IntegrityError

from lamina.agent.drivers.base import DiskSpec, GuestSpec
from lamina.compute.models import Host, Instance
from lamina.errors import (
    Ambiguous,
    BackendUnavailable,
    CommandFailed,
    Conflict,
    InvalidRequest,
    InvalidState,
    LaminaError,
)
from lamina.identity.principal import Principal
from lamina.jobs.models import Job
from lamina.jobs.runner import JobRunner
from lamina.services import Services
from lamina.volumes import service
from lamina.volumes.jobs import initiator_address
from lamina.volumes.models import Attachment, Snapshot, Volume
from lamina.wire.protocol import (
    DiskAttach,
    ExportInfo,
    SnapshotInfo,
    VolumeInfo,
)

ALICE = Principal("u-alice", "alice", "member")
BOB = Principal("u-bob", "bob", "member")
ADMIN = Principal("u-admin", "admin", "admin")
GiB = 1024**3


#: Read-only procedures: never failed by injection (a test names the ones that change).
READS = frozenset({"downloads", "volume_list", "snapshot_list", "export_list", "guests"})
#: The guests of the instances below, running on host vmm.
GUESTS = ("lamina-i-web", "lamina-i-db")


class FakeAgent:
    """One host's agent as the manager reaches it: the real agent over the fakes of
    ``tests/fakes`` (called in-process), behind a layer that fails the procedures a test
    names and records every call."""

    def __init__(self, name: str, world: World, host: FakeHost) -> None:
        self.name = name
        self.world = world
        self.host = host
        self.hv = host.hypervisor
        self.backend = host.volumes

    def _call(self, what: str) -> None:
        self.world.calls.append(f"{self.name}:{what}")
        self.backend.free = self.world.volume_free
        if self.name in self.world.down:
            raise BackendUnavailable(f"agent {self.name} cannot be reached (injected)")
        if what in self.world.fail:
            raise CommandFailed([what], 1, f"{what} broke (injected)")

    def _die_after(self, what: str) -> None:
        """The agent is killed after doing ``what`` but before answering, if so asked."""
        if what in self.world.die_after:
            self.world.down.add(self.name)
            raise BackendUnavailable(f"agent {self.name} failed: connection reset (injected)")

    def __getattr__(self, procedure: str) -> Any:
        method = getattr(self.host.client, procedure)
        if procedure in READS:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self._call(procedure)
            result = method(*args, **kwargs)
            self._die_after(procedure)
            return result

        return call

    # What the tests look at: the fakes' own records.

    @property
    def volumes(self) -> dict[str, VolumeInfo]:
        return self.backend.volume_records

    @property
    def snapshots(self) -> dict[str, SnapshotInfo]:
        return self.backend.snapshot_records

    @property
    def exports(self) -> dict[str, ExportInfo]:
        return self.backend.export_records

    @property
    def disks(self) -> dict[tuple[str, str], DiskAttach]:
        """(guest, target) -> the volume attached there."""
        return {
            (name, target): DiskAttach(
                iqn=d.iqn, lun=d.lun, portal=f"{d.host}:{d.port}", format=d.format, serial=d.serial
            )
            for name, guest in self.hv.guests.items()
            for target, d in guest.attached.items()
        }

    def own_disks(self, guest: str, targets: list[str]) -> None:
        """Give the (running) guest these disks of its own, as if defined with them."""
        record = self.hv.guests[guest]
        own = tuple(DiskSpec(f"/var/lib/lamina/{guest}/{t}.qcow2", t) for t in targets)
        record.spec = dataclasses.replace(record.spec, disks=own)


class World:
    """The agents of every host, as an ``AgentPool``: real agents over fakes
    (``tests/fakes``) with failures injected by procedure name."""

    def __init__(self, root: Path) -> None:
        self.calls: list[str] = []
        self.fail: set[str] = set()
        #: Hosts whose agent cannot be reached; procedures after which an agent dies.
        self.down: set[str] = set()
        self.die_after: set[str] = set()
        self.hosts = InProcessAgents(root)
        self.agents: dict[str, FakeAgent] = {}
        #: What every volume server answers as its volume root's free bytes.
        self.volume_free: int | None = 100 * GiB

    def for_host(self, host: Host) -> FakeAgent:
        found = self.agents.get(host.name)
        if found is None:
            made = self.hosts.host(host.name, host.address)
            made.volumes.portal = f"{host.address.rsplit(':', 1)[0]}:3260"
            for guest in GUESTS if host.name == "vmm" else ():
                made.hypervisor.define(GuestSpec(name=guest, vcpus=1, memory_mib=64))
                made.hypervisor.start(guest)
            found = self.agents[host.name] = FakeAgent(host.name, self, made)
        return found

    def close(self) -> None:
        self.hosts.close()


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    services.agents = World(tmp_path / "hosts")  # type: ignore[assignment]
    with services.db.write() as s:
        for hid, name, address in (("h-store", "store", "10.0.0.1"), ("h-vmm", "vmm", "10.0.0.2")):
            s.add(
                Host(
                    id=hid,
                    name=name,
                    address=f"{address}:7000",
                    status="up",
                    cert_fingerprint=f"fp-{name}",
                )
            )
        s.flush()
        s.add(
            Instance(
                id="i-web",
                name="web",
                owner=ALICE.user_id,
                host_id="h-vmm",
                status="running",
                vcpus=1,
                memory_mib=64,
            )
        )
        s.add(
            Instance(
                id="i-db",
                name="db",
                owner=ALICE.user_id,
                host_id="h-vmm",
                status="running",
                vcpus=1,
                memory_mib=64,
            )
        )
    try:
        yield services
    finally:
        services.close()


def world(svc: Services) -> World:
    agents: Any = svc.agents
    assert isinstance(agents, World)
    return agents


def store(svc: Services) -> FakeAgent:
    return world(svc).for_host(Host(name="store", address="10.0.0.1:7000"))


def vmm(svc: Services) -> FakeAgent:
    return world(svc).for_host(Host(name="vmm", address="10.0.0.2:7000"))


def run_jobs(svc: Services) -> list[Job]:
    """Run every queued job to its end, in this thread's order."""
    runner = JobRunner(svc.db, svc.jobs, svc, workers=1, lease_seconds=30, runner_id="unit:1:x")
    done = []
    while (job_id := runner.claim()) is not None:
        runner.run(job_id)
        with svc.db.read() as s:
            job = s.get(Job, job_id)
            assert job is not None
            done.append(job)
    return done


def volume(svc: Services, volume_id: str) -> Volume:
    with svc.db.read() as s:
        found = s.get(Volume, volume_id)
        assert found is not None
        return found


def attachment(svc: Services, volume_id: str) -> Attachment | None:
    with svc.db.read() as s:
        return service.attachment_of(s, volume_id)


def new_volume(svc: Services, size: int = GiB, **kwargs: Any) -> str:
    created, _ = service.create_volume(svc, ALICE, size_bytes=size, **kwargs)
    volume_id = created["id"]
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    return volume_id


def attached_volume(svc: Services) -> str:
    volume_id = new_volume(svc)
    service.attach_volume(svc, ALICE, volume_id, "web", None)
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    return volume_id


# -- states -------------------------------------------------------------------------------


@pytest.mark.parametrize("current", sorted(service.TRANSITIONS))
@pytest.mark.parametrize("target", sorted(service.TRANSITIONS))
def test_only_the_documented_transitions_are_allowed(current: str, target: str) -> None:
    vol = Volume(id="vol-0123456789abcdef", status=current, size_bytes=1)
    session: Any = SimpleNamespace(scalar=lambda *_: None)
    if target in service.TRANSITIONS[current]:
        service.move(session, vol, target)
        assert vol.status == target
    else:
        with pytest.raises(InvalidState) as caught:
            service.move(session, vol, target)
        assert f"it is {current}" in caught.value.message
        assert caught.value.status == 409 and caught.value.code == "invalid_state"
        assert vol.status == current


def test_ids_have_the_documented_shape(svc: Services) -> None:
    volume_id = new_volume(svc)
    assert volume_id.startswith("vol-") and len(volume_id) == 4 + 16
    snap, _ = service.create_snapshot(svc, ALICE, volume_id, "x")
    assert snap["id"].startswith("snap-") and len(snap["id"]) == 5 + 16


# -- create, extend, delete ---------------------------------------------------------------


def test_a_volume_is_created_on_the_first_host_up(svc: Services) -> None:
    created, job = service.create_volume(svc, ALICE, size_bytes=GiB, comment="c")
    assert created["status"] == "creating" and job.kind == "volume.create"
    volume_id = created["id"]
    run_jobs(svc)
    vol = volume(svc, volume_id)
    assert (vol.status, vol.host_id, vol.backend, vol.export_format, vol.comment) == (
        "available",
        "h-store",
        "qcow2",
        "qcow2",
        "c",
    )
    assert volume_id in store(svc).volumes


def test_only_admins_choose_the_volume_server(svc: Services) -> None:
    with pytest.raises(LaminaError, match="administrators"):
        service.create_volume(svc, ALICE, size_bytes=GiB, host="vmm")
    created, _ = service.create_volume(svc, ADMIN, size_bytes=GiB, host="vmm")
    assert created["host_id"] == "h-vmm"


def test_a_failed_create_removes_what_it_made_and_marks_the_volume(svc: Services) -> None:
    world(svc).fail.add("volume_create")
    created, _ = service.create_volume(svc, ALICE, size_bytes=GiB)
    volume_id = created["id"]
    [job] = run_jobs(svc)
    assert job.status == "rolled_back"
    vol = volume(svc, volume_id)
    assert vol.status == "error" and "volume_create broke" in (vol.error or "")
    assert store(svc).volumes == {}


def test_extend_only_grows_an_available_volume(svc: Services) -> None:
    volume_id = new_volume(svc)
    with pytest.raises(InvalidRequest, match="bigger"):
        service.extend_volume(svc, ALICE, volume_id, GiB // 2)
    service.extend_volume(svc, ALICE, volume_id, 2 * GiB)
    assert volume(svc, volume_id).status == "extending"
    run_jobs(svc)
    assert (volume(svc, volume_id).status, volume(svc, volume_id).size_bytes) == (
        "available",
        2 * GiB,
    )
    service.attach_volume(svc, ALICE, volume_id, "web", None)
    run_jobs(svc)
    with pytest.raises(InvalidState, match="it is in-use"):
        service.extend_volume(svc, ALICE, volume_id, 3 * GiB)


def test_an_in_use_volume_is_not_deleted_and_one_with_snapshots_is(svc: Services) -> None:
    volume_id = attached_volume(svc)
    with pytest.raises(InvalidState) as caught:
        service.delete_volume(svc, ALICE, volume_id)
    assert "it is in-use (attached to instance 'web'" in caught.value.message
    snap, _ = service.create_snapshot(svc, ALICE, volume_id, "keep")
    snap_id = snap["id"]
    run_jobs(svc)
    service_detach(svc, volume_id)
    service.delete_volume(svc, ALICE, volume_id)
    [job] = run_jobs(svc)
    assert job.status == "succeeded"
    with svc.db.read() as s:
        assert s.get(Volume, volume_id) is None
        kept = s.get(Snapshot, snap_id)
        assert kept is not None and kept.status == "completed" and kept.volume_id == volume_id
    assert volume_id not in store(svc).volumes and snap_id in store(svc).snapshots


def service_detach(svc: Services, volume_id: str) -> Job:
    service.detach_volume(svc, ALICE, volume_id)
    [job] = run_jobs(svc)
    return job


# -- snapshots ----------------------------------------------------------------------------


def test_a_clone_keeps_its_snapshot_and_a_copy_does_not(svc: Services) -> None:
    volume_id = new_volume(svc)
    snap, job = service.create_snapshot(svc, ALICE, volume_id)
    assert snap["status"] == "pending"
    snap_id = snap["id"]
    run_jobs(svc)
    with pytest.raises(InvalidRequest, match="smaller"):
        service.create_volume(svc, ALICE, size_bytes=GiB // 2, snapshot=snap_id)
    clone = new_volume(svc, size=0, snapshot=snap_id)
    copy = new_volume(svc, size=0, snapshot=snap_id, clone=False)
    assert volume(svc, clone).cloned_from == snap_id and volume(svc, clone).size_bytes == GiB
    assert volume(svc, copy).cloned_from is None and volume(svc, copy).snapshot_id == snap_id
    with pytest.raises(InvalidState, match=clone):
        service.delete_snapshot(svc, ALICE, snap_id)


def test_a_failed_snapshot_is_marked_and_leaves_nothing(svc: Services) -> None:
    volume_id = new_volume(svc)
    world(svc).fail.add("snapshot_create")
    snap, _ = service.create_snapshot(svc, ALICE, volume_id)
    snap_id = snap["id"]
    [job] = run_jobs(svc)
    assert job.status == "rolled_back"
    with svc.db.read() as s:
        assert s.get(Snapshot, snap_id).status == "error"  # type: ignore[union-attr]
    assert store(svc).snapshots == {}
    with pytest.raises(InvalidState, match="it is error"):
        service.create_volume(svc, ALICE, snapshot=snap_id)


# -- names --------------------------------------------------------------------------------


def test_volumes_and_snapshots_are_found_by_name(svc: Services) -> None:
    created, _ = service.create_volume(svc, ALICE, size_bytes=GiB, name="data")
    assert created["name"] == "data"
    run_jobs(svc)
    assert service.show_volume(svc, ALICE, "data")["id"] == created["id"]
    snap, _ = service.create_snapshot(svc, ALICE, "data", "c", name="nightly")
    assert (snap["name"], snap["volume"], snap["volume_name"]) == ("nightly", created["id"], "data")
    run_jobs(svc)
    assert service.show_snapshot(svc, ALICE, "nightly")["id"] == snap["id"]
    assert [x["id"] for x in service.list_snapshots(svc, ALICE, volume="data")] == [snap["id"]]
    restored, _ = service.create_volume(svc, ALICE, snapshot="nightly", name="restored")
    assert restored["snapshot"] == snap["id"]
    run_jobs(svc)
    assert [v["name"] for v in service.list_volumes(svc, ALICE, name="restored")] == ["restored"]
    assert [v["id"] for v in service.list_volumes(svc, ALICE, ids=["data", restored["id"]])] == [
        created["id"],
        restored["id"],
    ]
    service.attach_volume(svc, ALICE, "data", "web", None)
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    [attached] = service.list_volumes(svc, ALICE, instance="web")
    assert attached["name"] == "data" and attached["attachment"]["instance_name"] == "web"
    service.detach_volume(svc, ALICE, "data")
    run_jobs(svc)
    service.extend_volume(svc, ALICE, "data", 2 * GiB)
    run_jobs(svc)
    assert volume(svc, created["id"]).size_bytes == 2 * GiB
    # The other user's names are not theirs to use.
    with pytest.raises(LaminaError, match="volume 'data' does not exist"):
        service.show_volume(svc, BOB, "data")


def test_a_name_is_optional_and_a_dns_label(svc: Services) -> None:
    unnamed, _ = service.create_volume(svc, ALICE, size_bytes=GiB)
    assert unnamed["name"] is None
    for bad in ("Data", "-x", "a_b", "x" * 64, "vol-0123456789abcdef"):
        with pytest.raises(InvalidRequest, match="volume name") as caught:
            service.create_volume(svc, ALICE, size_bytes=GiB, name=bad)
        assert caught.value.details["fields"][0]["field"] == "name"
    run_jobs(svc)
    with pytest.raises(InvalidRequest, match="snapshot name"):
        service.create_snapshot(svc, ALICE, unnamed["id"], name="snap-0123456789abcdef")


def test_a_name_several_volumes_carry_is_ambiguous_unless_one_is_the_callers(
    svc: Services,
) -> None:
    mine, _ = service.create_volume(svc, ALICE, size_bytes=GiB, name="shared")
    admins, _ = service.create_volume(svc, ADMIN, size_bytes=GiB, name="shared")
    run_jobs(svc)
    # Each owner's own volume of that name comes first.
    assert service.show_volume(svc, ALICE, "shared")["id"] == mine["id"]
    assert service.show_volume(svc, ADMIN, "shared")["id"] == admins["id"]
    # Two of a member's own: ambiguous, listing both; the ids still work.
    second, _ = service.create_volume(svc, ALICE, size_bytes=GiB, name="shared")
    run_jobs(svc)
    with pytest.raises(Ambiguous) as caught:
        service.delete_volume(svc, ALICE, "shared")
    assert caught.value.code == "ambiguous_name" and caught.value.status == 400
    assert {c["id"] for c in caught.value.details["candidates"]} == {mine["id"], second["id"]}
    assert service.show_volume(svc, ALICE, second["id"])["name"] == "shared"


# -- attach and detach --------------------------------------------------------------------


def test_attach_exports_to_the_instance_host_and_passes_the_serial(svc: Services) -> None:
    volume_id = attached_volume(svc)
    vol = volume(svc, volume_id)
    assert vol.status == "in-use"
    export = store(svc).exports[volume_id]
    assert export.initiator_address == "10.0.0.2"
    disk = vmm(svc).disks[("lamina-i-web", "vdb")]
    assert (disk.iqn, disk.portal, disk.serial, disk.format) == (
        export.iqn,
        export.portal,
        volume_id,
        "qcow2",
    )
    held = attachment(svc, volume_id)
    assert held is not None and (held.status, held.device, held.iqn) == (
        "attached",
        "vdb",
        export.iqn,
    )
    assert [v["id"] for v in service.list_volumes(svc, ALICE, instance="web")] == [volume_id]
    assert service.list_volumes(svc, ALICE, instance="db") == []
    assert service.list_volumes(svc, BOB) == []


def test_the_default_device_skips_the_guest_own_disks(svc: Services) -> None:
    vmm(svc).own_disks("lamina-i-web", ["vda", "vdb", "vdc"])
    volume_id = new_volume(svc)
    service.attach_volume(svc, ALICE, volume_id, "web", None)
    assert attachment(svc, volume_id).device == "vdd"  # type: ignore[union-attr]
    run_jobs(svc)
    other = new_volume(svc)
    vmm(svc).own_disks("lamina-i-web", [])  # a device given is not checked with the host
    world(svc).fail.add("guest_disks")
    service.attach_volume(svc, ALICE, other, "web", "vdb")
    assert attachment(svc, other).device == "vdb"  # type: ignore[union-attr]


def test_a_second_attach_is_refused_naming_the_instance(svc: Services) -> None:
    volume_id = new_volume(svc)
    service.attach_volume(svc, ALICE, volume_id, "web", None)
    with pytest.raises(InvalidState, match="attaching to instance 'web'"):
        service.attach_volume(svc, ALICE, volume_id, "db", None)
    run_jobs(svc)
    with pytest.raises(InvalidState, match="attached to instance 'web'"):
        service.attach_volume(svc, ALICE, volume_id, "db", None)


def test_the_constraints_refuse_a_double_attachment_on_their_own(svc: Services) -> None:
    """Even a writer that skipped the state check (a race) cannot attach a volume twice or
    give one device two volumes."""
    first, second = new_volume(svc), new_volume(svc)
    with svc.db.write() as s:
        s.add(Attachment(volume_id=first, instance_id="i-web", device="vdb"))
    with pytest.raises(IntegrityError), svc.db.write() as s:
        s.add(Attachment(volume_id=first, instance_id="i-db", device="vdc"))
    with pytest.raises(IntegrityError), svc.db.write() as s:
        s.add(Attachment(volume_id=second, instance_id="i-web", device="vdb"))
    conflict = service._attach_conflict(svc, first, "i-db", "db", "vdc")
    assert "already attached to instance 'web'" in conflict.message
    # Through the service: a device taken by another volume loses to the constraint.
    with svc.db.write() as s:
        s.get(Attachment, 1).status = "attached"  # type: ignore[union-attr]
        s.get(Volume, first).status = "in-use"  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="device vdb of instance 'web' is taken"):
        service.attach_volume(svc, ALICE, second, "web", "vdb")
    assert volume(svc, second).status == "available"


def test_attach_needs_operate_access_to_both(svc: Services) -> None:
    volume_id = new_volume(svc)
    with pytest.raises(LaminaError, match="does not exist"):
        service.attach_volume(svc, BOB, volume_id, "web", None)


def _broken(svc: Services, kind: str, step: str) -> None:
    """Make the named step of a job kind fail (for DB-only steps no agent call can fail)."""

    def boom(_: Any) -> None:
        raise RuntimeError(f"{step} broke (injected)")

    registered = svc.jobs.get(kind)
    steps = tuple(
        dataclasses.replace(st, do=boom) if st.name == step else st for st in registered.steps
    )
    svc.jobs._kinds[kind] = dataclasses.replace(registered, steps=steps)


ATTACH_FAILURES = {"export": "volume_export", "attach": "guest_attach_disk", "record": None}


@pytest.mark.parametrize("step", list(ATTACH_FAILURES))
def test_an_attach_failing_at_any_step_undoes_every_earlier_one(svc: Services, step: str) -> None:
    volume_id = new_volume(svc)
    procedure = ATTACH_FAILURES[step]
    if procedure:
        world(svc).fail.add(procedure)
    else:
        _broken(svc, "volume.attach", step)
    world(svc).calls.clear()
    service.attach_volume(svc, ALICE, volume_id, "web", None)
    [job] = run_jobs(svc)
    assert job.status == "rolled_back", job.error
    assert f"step {step!r} failed" in (job.error or "")
    vol = volume(svc, volume_id)
    assert vol.status == "available" and step in (vol.error or "")
    assert attachment(svc, volume_id) is None
    assert store(svc).exports == {} and vmm(svc).disks == {}
    order = list(ATTACH_FAILURES)
    undone = [st.name for st in job.steps if st.status == "undone"]
    assert undone == [n for n in ("export", "attach") if order.index(n) <= order.index(step)]
    # The volume can be attached again at once.
    world(svc).fail.clear()
    svc.jobs._kinds.clear()
    from lamina.volumes.jobs import register_volume_jobs

    register_volume_jobs(svc.jobs)
    service.attach_volume(svc, ALICE, volume_id, "db", None)
    [again] = run_jobs(svc)
    assert again.status == "succeeded" and volume(svc, volume_id).status == "in-use"


DETACH_FAILURES = {"detach": "guest_detach_disk", "unexport": "volume_unexport", "record": None}


@pytest.mark.parametrize("step", list(DETACH_FAILURES))
def test_a_detach_failing_at_any_step_leaves_the_volume_attached(svc: Services, step: str) -> None:
    volume_id = attached_volume(svc)
    before_export = store(svc).exports[volume_id]
    before_disk = vmm(svc).disks[("lamina-i-web", "vdb")]
    procedure = DETACH_FAILURES[step]
    if procedure:
        world(svc).fail.add(procedure)
    else:
        _broken(svc, "volume.detach", step)
    job = service_detach(svc, volume_id)
    assert job.status == "rolled_back", job.error
    vol = volume(svc, volume_id)
    assert vol.status == "in-use" and step in (vol.error or "")
    held = attachment(svc, volume_id)
    assert held is not None and held.status == "attached"
    assert store(svc).exports[volume_id].iqn == before_export.iqn
    assert vmm(svc).disks[("lamina-i-web", "vdb")].iqn == before_disk.iqn
    assert vmm(svc).disks[("lamina-i-web", "vdb")].serial == volume_id


def test_detach_unexports_and_frees_the_volume(svc: Services) -> None:
    volume_id = attached_volume(svc)
    job = service_detach(svc, volume_id)
    assert job.status == "succeeded"
    assert volume(svc, volume_id).status == "available"
    assert attachment(svc, volume_id) is None
    assert store(svc).exports == {} and vmm(svc).disks == {}


def test_detach_of_a_guest_that_is_gone_still_frees_the_volume(svc: Services) -> None:
    from lamina.errors import GuestNotFound

    volume_id = attached_volume(svc)

    def gone(name: str, target: str) -> None:
        raise GuestNotFound(name)

    vmm(svc).guest_detach_disk = gone  # type: ignore[method-assign]
    assert service_detach(svc, volume_id).status == "succeeded"
    assert volume(svc, volume_id).status == "available"


def test_every_step_can_run_twice(svc: Services) -> None:
    """What a manager restarted mid-step does: run the step again. The end state is the
    same as after one run."""
    volume_id = new_volume(svc)
    service.attach_volume(svc, ALICE, volume_id, "web", None)
    kind = svc.jobs.get("volume.attach")
    twice = tuple(
        dataclasses.replace(st, do=lambda ctx, do=st.do: (do(ctx), do(ctx))[0]) for st in kind.steps
    )
    svc.jobs._kinds["volume.attach"] = dataclasses.replace(kind, steps=twice)
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    assert len(store(svc).exports) == 1 and len(vmm(svc).disks) == 1


def test_the_initiator_address_is_the_host_part_of_the_agent_address() -> None:
    assert initiator_address(Host(address="192.0.2.7:7000")) == "192.0.2.7"
    assert initiator_address(Host(address="[2001:db8::1]:7000")) == "2001:db8::1"
    assert initiator_address(Host(address="localhost:7000")) in ("127.0.0.1", "::1")


def test_an_attach_whose_detach_cannot_be_undone_is_safe_once_unexported(svc: Services) -> None:
    """The instance's host cannot be told to detach: the export's withdrawal alone keeps the
    guest from the volume, so it is available again; the job says the rollback is
    incomplete."""
    volume_id = new_volume(svc)
    world(svc).fail.update({"guest_attach_disk", "guest_detach_disk"})
    service.attach_volume(svc, ALICE, volume_id, "web", None)
    [job] = run_jobs(svc)
    assert job.status == "failed" and "rollback incomplete" in (job.error or "")
    assert [st.status for st in job.steps] == ["undone", "undo_failed", "pending"]
    assert volume(svc, volume_id).status == "available" and attachment(svc, volume_id) is None
    assert store(svc).exports == {}


def test_an_undo_that_could_not_reach_its_host_is_retried_when_it_answers(
    svc: Services,
) -> None:
    """The volume server dies while exporting (the target is made, no answer): the export's
    undo cannot reach it, so the job fails with its rollback pending and the volume is
    error. Once the server answers, a runner (a new one: as after a manager restart) undoes
    the export by itself: the target is gone, the volume available, the job rolled back."""
    from lamina.jobs.service import retry_pending_undos
    from lamina.jobs.views import describe_job

    volume_id = new_volume(svc)
    world(svc).die_after.add("volume_export")
    service.attach_volume(svc, ALICE, volume_id, "web", None)
    [job] = run_jobs(svc)
    assert job.status == "failed" and "rollback pending" in (job.error or ""), job.error
    assert [st.status for st in job.steps] == ["undo_pending", "pending", "pending"]
    assert describe_job(job)["rollback"] == "pending" and job.undo_retry_at is not None
    assert volume(svc, volume_id).status == "error" and volume_id in store(svc).exports

    # Still down: the retry is not due yet; made due, it fails again and backs off.
    assert run_jobs(svc) == []
    with svc.db.write() as s:
        assert retry_pending_undos(s) == 1
    [again] = run_jobs(svc)
    assert again.status == "failed" and again.undo_attempts == 1
    assert again.undo_retry_at is not None and volume_id in store(svc).exports
    assert run_jobs(svc) == []

    world(svc).down.clear()  # the host answers again
    with svc.db.write() as s:
        retry_pending_undos(s)
    [done] = run_jobs(svc)
    assert done.status == "rolled_back", done.error
    assert "rollback" not in (done.error or "") and done.undo_retry_at is None
    assert [st.status for st in done.steps] == ["undone", "pending", "pending"]
    assert describe_job(done)["rollback"] == "done"
    assert store(svc).exports == {}
    assert volume(svc, volume_id).status == "available" and attachment(svc, volume_id) is None


def test_an_attach_whose_export_cannot_be_withdrawn_is_an_error(svc: Services) -> None:
    volume_id = new_volume(svc)
    world(svc).fail.update({"guest_attach_disk", "guest_detach_disk", "volume_unexport"})
    service.attach_volume(svc, ALICE, volume_id, "web", None)
    [job] = run_jobs(svc)
    assert job.status == "failed"
    vol = volume(svc, volume_id)
    assert vol.status == "error" and "may still be exported" in (vol.error or "")
    # Deleting it withdraws the export first.
    world(svc).fail.clear()
    service.delete_volume(svc, ALICE, volume_id)
    [gone] = run_jobs(svc)
    assert gone.status == "succeeded" and store(svc).exports == {} and store(svc).volumes == {}


def test_a_detach_that_cannot_be_undone_marks_the_volume_error(svc: Services) -> None:
    volume_id = attached_volume(svc)
    world(svc).fail.update({"volume_unexport", "guest_attach_disk"})
    job = service_detach(svc, volume_id)
    assert job.status == "failed"
    vol = volume(svc, volume_id)
    assert vol.status == "error" and "could not undo detach" in (vol.error or "")


def test_reconcile_reads_the_volume_of_a_guest_disk_source() -> None:
    from lamina.volumes.reconcile import volume_of_source

    source = "iscsi://127.0.0.1:3260/iqn.2026-11.lamina:vol-0123456789abcdef/1"
    assert volume_of_source(source) == "vol-0123456789abcdef"
    assert volume_of_source("iscsi://10.0.0.1:3260/iqn.2001-04.com.example:disk/1") is None
    assert volume_of_source("/var/lib/lamina/agent/guests/x/root.qcow2") is None
    assert volume_of_source(None) is None


def test_reconcile_skips_a_volume_whose_job_is_in_progress(svc: Services) -> None:
    from lamina.volumes.reconcile import find_volume_differences

    service.create_volume(svc, ALICE, size_bytes=GiB)  # queued: no bytes yet
    assert find_volume_differences(svc) == []


def test_a_reconcile_fix_refuses_a_volume_that_changed_since(svc: Services) -> None:
    from lamina.compute.reconcile import apply_fixes
    from lamina.volumes.reconcile import find_volume_differences

    volume_id = attached_volume(svc)
    assert find_volume_differences(svc) == []
    vmm(svc).hv.guests["lamina-i-web"].attached.clear()  # the guest lost its disk
    [diff] = find_volume_differences(svc)
    assert (diff.kind, diff.resource) == ("stale_attachment", f"volume {volume_id}")
    with svc.db.write() as s:
        s.get(Volume, volume_id).comment = "touched"  # type: ignore[union-attr]
    [outcome] = apply_fixes([diff], [diff.id])
    assert "changed meanwhile" in outcome["outcome"]
    assert volume_id in store(svc).exports

    [again] = find_volume_differences(svc)
    assert again.id == diff.id  # the same difference, found again
    [outcome] = apply_fixes([again], [again.id])
    assert outcome["outcome"] == "fixed"
    assert store(svc).exports == {} and attachment(svc, volume_id) is None
    assert volume(svc, volume_id).status == "available"
    assert find_volume_differences(svc) == []


def test_only_this_deployments_old_enough_exports_of_unknown_volumes_are_withdrawn(
    svc: Services,
) -> None:
    import time

    from lamina.compute.reconcile import apply_fixes
    from lamina.volumes.reconcile import find_volume_differences

    def export(volume: str, deployment: str | None, age: float) -> None:
        store(svc).exports[volume] = ExportInfo(
            volume=volume,
            iqn=f"iqn.2026-11.lamina:{volume}",
            lun=1,
            tid=len(store(svc).exports) + 1,
            portal="10.0.0.1:3260",
            initiator_address="10.0.0.2",
            export_format="qcow2",
            deployment=deployment,
            created_at=time.time() - age if deployment else None,
        )

    export("vol-00000000000000a1", svc.deployment, 3600)  # ours, old: a stray
    export("vol-00000000000000a2", svc.deployment, 5)  # ours, too new
    export("vol-00000000000000a3", "0123456789abcdef", 3600)  # another deployment's
    export("vol-00000000000000a4", None, 3600)  # untagged
    diffs = find_volume_differences(svc)
    assert sorted((d.kind, d.resource, d.fix is not None) for d in diffs) == [
        ("stray_export", "volume vol-00000000000000a1 on store", True),
        ("untagged_export", "volume vol-00000000000000a4 on store", False),
    ]
    results = apply_fixes(find_volume_differences(svc), [d.id for d in diffs])
    assert sorted(r["outcome"] for r in results) == ["fixed", "no safe fix"]
    assert sorted(store(svc).exports) == [
        "vol-00000000000000a2",
        "vol-00000000000000a3",
        "vol-00000000000000a4",
    ]


def test_the_cli_choices_are_the_api_values() -> None:
    from lamina.cli import snapshot as cli_snapshot
    from lamina.cli import volume as cli_volume
    from lamina.volumes.models import SNAPSHOT_STATUSES, VOLUME_STATUSES

    assert cli_volume.STATUSES == VOLUME_STATUSES
    assert cli_snapshot.STATUSES == SNAPSHOT_STATUSES
    assert list(cli_volume.DEVICES) == service.DEVICES


def test_the_cli_names_its_own_flags_for_the_api_fields() -> None:
    from lamina.cli import snapshot as cli_snapshot
    from lamina.cli import volume as cli_volume
    from lamina.cli.flags import flag_names

    create = flag_names(cli_volume.volume.commands["create"])
    assert (create["size_bytes"], create["clone"], create["name"]) == ("--size", "--copy", "--name")
    assert flag_names(cli_volume.volume.commands["extend"])["size_bytes"] == "--size"
    assert flag_names(cli_volume.volume.commands["attach"])["instance"] == "INSTANCE"
    assert flag_names(cli_snapshot.snapshot.commands["create"])["volume"] == "VOLUME"
