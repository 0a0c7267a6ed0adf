"""Checkpoints against in-process agents: the real agent (its disks made and copied with
qemu-img) over the fake hypervisor, reached by the real ``AgentClient``; the manager's use
cases and jobs as they run. What the files hold, where the guest runs after a restore and
what an incompatible host is told are checked on the fakes' own records."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.agents import FakeHost, InProcessClient
from harness import bare_services
from sqlalchemy import select

from lamina.agent.cache import FetchConfig
from lamina.agent.drivers.fake import FakeHypervisor
from lamina.agent.fake_volumes import FakeVolumeBackend
from lamina.agent.server import Agent
from lamina.compute import checkpoints
from lamina.compute.instances import delete_instance
from lamina.compute.models import Checkpoint, Host, Instance
from lamina.errors import (
    CommandFailed,
    Conflict,
    Incompatible,
    InvalidRequest,
    InvalidState,
    NoCapacity,
)
from lamina.identity.principal import Principal
from lamina.images.models import Image
from lamina.jobs.models import Job
from lamina.jobs.runner import JobRunner
from lamina.services import Services
from lamina.wire.protocol import DiskCreate, GuestDefinition, GuestDisk, ServerInfo

ALICE = Principal("u-alice", "alice", "member")
BOB = Principal("u-bob", "bob", "member")
MiB = 1024 * 1024
GUEST = "lamina-i-web"


class Hosts:
    """The agents of every host (an ``AgentPool``): the real agent over the fakes, allowed
    to fetch files under the test's folder (where the image store and sources are)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts: dict[str, FakeHost] = {}
        self.fail: set[str] = set()

    def host(self, name: str) -> FakeHost:
        found = self.hosts.get(name)
        if found is None:
            hypervisor = FakeHypervisor(hostname=name)
            fetch = FetchConfig(roots=(self.root,))
            agent = Agent(self.root / "hosts" / name, hypervisor, fetch=fetch)
            volumes = FakeVolumeBackend(deployment=lambda: agent.identity.id)
            agent.volumes = volumes
            client = InProcessClient(agent, f"{name}:7000")
            found = self.hosts[name] = FakeHost(agent, hypervisor, volumes, client)
        return found

    def for_host(self, host: Host) -> Any:
        client = self.host(host.name).client
        fail = self.fail

        class Failing:
            def __getattr__(self, procedure: str) -> Any:
                method = getattr(client, procedure)
                if procedure not in fail:
                    return method

                def broken(*args: Any, **kwargs: Any) -> Any:
                    raise CommandFailed([procedure], 1, f"{procedure} broke (injected)")

                return broken

        return Failing()

    def close(self) -> None:
        for host in self.hosts.values():
            host.client.close()
            host.agent.close()


def _store_location(
    session: Any, box: Any, host_id: str, source: str, digest: str | None
) -> tuple[str, str | None, str | None]:
    if source.startswith("image:"):
        image = session.get(Image, source.removeprefix("image:").split("@")[0])
        return str(image.location), digest, None
    return source, digest, None


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    # No manager serves /blobs here: the in-process agents copy the repository's files from
    # the file store's folder instead (the blob route is tested in test_blob_fetch and
    # test_checkpoint_guests, against real agents).
    monkeypatch.setattr("lamina.compute.fetch.host_source", _store_location)
    hosts = Hosts(tmp_path)
    services.agents = hosts  # type: ignore[assignment]
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel " * 100)
    layer = tmp_path / "base.squashfs"
    layer.write_bytes(b"layer " * 1000)
    digest = hashlib.sha256(layer.read_bytes()).hexdigest()
    with services.db.write() as s:
        for hid, name in (("h-1", "h1"), ("h-2", "h2")):
            s.add(Host(id=hid, name=name, address=f"{name}:7000", status="up", vcpus=4))
            s.flush()
            row = s.get(Host, hid)
            assert row is not None
            row.memory_mib = 4096
        s.add(
            Image(
                id="img-base",
                name="base",
                owner="u-admin",
                access="public",
                status="available",
                store="file",
                location=layer.as_uri(),
                sha256=digest,
                size=layer.stat().st_size,
                type="layer",
                format="squashfs",
                others={},
            )
        )
        s.add(
            Instance(
                id="i-web",
                name="web",
                owner=ALICE.user_id,
                host_id="h-1",
                status="running",
                vcpus=1,
                memory_mib=256,
                kernel=str(kernel),
                cmdline="console=ttyS0",
                disk_size_bytes=8 * MiB,
                layers=[{"image": "img-base", "source": layer.as_uri(), "sha256": digest}],
            )
        )
        s.add(
            Instance(
                id="i-old",
                name="old",
                owner=ALICE.user_id,
                host_id="h-1",
                status="running",
                vcpus=1,
                memory_mib=256,
                kernel=str(kernel),
            )
        )
    boot_guest(hosts.host("h1"), kernel, layer)
    try:
        yield services
    finally:
        hosts.close()
        services.close()


def boot_guest(host: FakeHost, kernel: Path, layer: Path) -> None:
    """The layered guest of instance web on ``host``, as instance.create leaves it."""
    client = host.client
    kernel_entry = client.cache_install(str(kernel))
    layer_entry = client.cache_install(layer.as_uri())
    client.disk_create(DiskCreate(guest=GUEST, name="upper", size_bytes=8 * MiB, format="raw"))
    client.disk_create(DiskCreate(guest=GUEST, name="config", format="raw", files={"a": "1\n"}))
    write_upper(host, b"before")
    client.define(
        GUEST,
        GuestDefinition(
            vcpus=1,
            memory_mib=256,
            kernel=kernel_entry.sha256,
            cmdline="console=ttyS0",
            disks=[
                GuestDisk(name="l0", layer=layer_entry.sha256, serial="l0"),
                GuestDisk(name="upper", format="raw", serial="upper"),
                GuestDisk(name="config", format="raw", readonly=True, serial="config"),
            ],
        ),
    )
    client.act(GUEST, "start")


def upper(host: FakeHost) -> Path:
    return host.agent.disks.disk_path(GUEST, "upper")


def write_upper(host: FakeHost, data: bytes) -> None:
    """What the guest wrote to its instance layer: ``data`` at 1 MiB in."""
    with upper(host).open("r+b") as f:
        f.seek(MiB)
        f.write(data)


def read_upper(host: FakeHost, size: int) -> bytes:
    with upper(host).open("rb") as f:
        f.seek(MiB)
        return f.read(size)


def hosts(svc: Services) -> Hosts:
    found: Any = svc.agents
    assert isinstance(found, Hosts)
    return found


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


def take(svc: Services, name: str = "c1", who: Principal = ALICE) -> dict[str, Any]:
    checkpoints.create_checkpoint(svc, who, "web", name)
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    return checkpoints.show_checkpoint(svc, who, "web", name)["checkpoint"]


def instance(svc: Services, ref: str = "i-web") -> Instance:
    with svc.db.read() as s:
        found = s.get(Instance, ref)
        assert found is not None
        return found


def checkpoint_images(svc: Services) -> list[Image]:
    with svc.db.read() as s:
        return [i for i in s.scalars(select(Image)) if (i.others or {}).get("checkpoint")]


# -- taking one ---------------------------------------------------------------------------


def test_a_checkpoint_saves_memory_and_disks_and_the_guest_runs_on(svc: Services) -> None:
    h1 = hosts(svc).host("h1")
    made = take(svc)
    assert made["status"] == "available" and made["host_id"] == "h-1"
    assert set(made["images"]) == {"memory", "upper", "config"}
    assert made["requires"]["machine"] == "fake-7.2" and made["requires"]["qemu_version"]
    assert made["paused_seconds"] is not None and made["size"] > 0
    # The guest was paused for the copy and runs on.
    assert ("checkpoint", GUEST) in h1.hypervisor.calls
    assert h1.hypervisor.guests[GUEST].state == "running"
    assert instance(svc).status == "running"
    # Its files are private images of the instance's owner, in the default store, whose
    # bytes are what the host saved: the upper copy is a qcow2 holding what the guest wrote.
    found = {i.others["role"]: i for i in checkpoint_images(svc)}
    assert set(found) == {"memory", "upper", "config"}
    for image in found.values():
        assert (image.owner, image.access, image.status, image.store) == (
            ALICE.user_id,
            "private",
            "available",
            "file",
        )
    upper_copy = Path(str(found["upper"].location).removeprefix("file://"))
    raw = upper_copy.with_suffix(".raw")
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(upper_copy), str(raw)], check=True
    )
    assert raw.read_bytes()[MiB : MiB + 6] == b"before"
    memory = Path(str(found["memory"].location).removeprefix("file://"))
    assert json.loads(memory.read_text())["name"] == GUEST


def test_a_paused_instance_stays_paused(svc: Services) -> None:
    h1 = hosts(svc).host("h1")
    h1.hypervisor.pause(GUEST)
    with svc.db.write() as s:
        row = s.get(Instance, "i-web")
        assert row is not None
        row.status = "paused"
    take(svc)
    assert h1.hypervisor.guests[GUEST].state == "paused"


def test_what_cannot_be_checkpointed_is_refused(svc: Services) -> None:
    with pytest.raises(InvalidRequest, match="checkpoint name"):
        checkpoints.create_checkpoint(svc, ALICE, "web", "Bad Name")
    with pytest.raises(Conflict, match="not a layered instance"):
        checkpoints.create_checkpoint(svc, ALICE, "old", "c1")
    with pytest.raises(Exception, match="instance"):
        checkpoints.create_checkpoint(svc, BOB, "web", "c1")  # not Bob's to see
    take(svc, "c1")
    with pytest.raises(Conflict, match="has a checkpoint c1 already"):
        checkpoints.create_checkpoint(svc, ALICE, "web", "c1")
    with svc.db.write() as s:
        row = s.get(Instance, "i-web")
        assert row is not None
        row.status = "stopped"
    with pytest.raises(InvalidState, match="it is stopped"):
        checkpoints.create_checkpoint(svc, ALICE, "web", "c2")


def test_a_failed_store_leaves_no_image_and_the_guest_running(svc: Services) -> None:
    hosts(svc).fail.add("cache_read")
    checkpoints.create_checkpoint(svc, ALICE, "web", "c1")
    [job] = run_jobs(svc)
    assert job.status == "rolled_back"
    made = checkpoints.show_checkpoint(svc, ALICE, "web", "c1")["checkpoint"]
    assert made["status"] == "error" and "cache_read broke" in made["error"]
    assert checkpoint_images(svc) == []
    assert hosts(svc).host("h1").hypervisor.guests[GUEST].state == "running"
    # The host dropped the files it had saved.
    cached = {e.sha256 for e in hosts(svc).host("h1").agent.cache.entries()}
    assert len(cached) == 2  # the kernel and the layer only


# -- restoring ----------------------------------------------------------------------------


def test_restore_on_its_host_brings_back_disks_and_memory(svc: Services) -> None:
    h1 = hosts(svc).host("h1")
    take(svc)
    started = h1.hypervisor.guests[GUEST].started
    write_upper(h1, b"after!")  # the guest writes on after the checkpoint
    checkpoints.restore_checkpoint(svc, ALICE, "web", "c1")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    assert read_upper(h1, 6) == b"before"
    guest = h1.hypervisor.guests[GUEST]
    assert guest.state == "running" and ("restore", GUEST) in h1.hypervisor.calls
    assert guest.started == started  # it goes on from where it was saved
    assert (instance(svc).status, instance(svc).host_id) == ("running", "h-1")


def test_the_instance_records_what_the_restored_guest_booted(svc: Services) -> None:
    take(svc)
    booted = (instance(svc).layers, instance(svc).kernel)
    with svc.db.write() as s:  # a newer substrate, recorded for its next start
        row = s.get(Instance, "i-web")
        assert row is not None
        row.layers = [{"image": "img-new", "source": "file:///nowhere", "sha256": "0" * 64}]
        row.kernel = "/nowhere/vmlinux"
    checkpoints.restore_checkpoint(svc, ALICE, "web", "c1")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    assert (instance(svc).layers, instance(svc).kernel) == booted


def test_restore_on_another_host_moves_the_instance(svc: Services) -> None:
    h1, h2 = hosts(svc).host("h1"), hosts(svc).host("h2")
    take(svc)
    started = h1.hypervisor.guests[GUEST].started
    checkpoints.restore_checkpoint(svc, ALICE, "web", "c1", host="h2")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    assert (instance(svc).status, instance(svc).host_id) == ("running", "h-2")
    assert GUEST not in h1.hypervisor.guests and not h1.agent.disks.guest_dir(GUEST).exists()
    guest = h2.hypervisor.guests[GUEST]
    assert guest.state == "running" and guest.started == started
    assert read_upper(h2, 6) == b"before"
    # Its disks are this host's files: the layer from h2's cache, its own disks under h2.
    paths = [d.path for d in guest.spec.disks]
    assert all(p.startswith(str(h2.agent.root)) for p in paths), paths
    assert len(paths) == 3


def test_an_incompatible_host_is_refused_before_anything_is_touched(svc: Services) -> None:
    h2 = hosts(svc).host("h2")
    take(svc)
    h2.hypervisor.host = dataclasses.replace(
        h2.hypervisor.host, qemu_version="6.2.0", machine_types=("pc-i440fx-6.2",)
    )
    with pytest.raises(Incompatible) as refused:
        checkpoints.restore_checkpoint(svc, ALICE, "web", "c1", host="h2")
    assert refused.value.status == 409 and refused.value.code == "incompatible"
    message = refused.value.message
    assert "QEMU 7.2.0" in message and "6.2.0" in message and "fake-7.2" in message
    assert len(refused.value.details["reasons"]) == 2
    assert run_jobs(svc) == []
    assert h2.hypervisor.guests == {} and h2.agent.cache.entries() == []
    assert hosts(svc).host("h1").hypervisor.guests[GUEST].state == "running"
    assert instance(svc).host_id == "h-1"


def test_a_restore_onto_a_full_or_unknown_host_is_refused(svc: Services) -> None:
    take(svc)
    with svc.db.write() as s:
        row = s.get(Host, "h-2")
        assert row is not None
        row.memory_mib = 128
    with pytest.raises(NoCapacity):
        checkpoints.restore_checkpoint(svc, ALICE, "web", "c1", host="h2")
    with pytest.raises(Exception, match="does not exist"):
        checkpoints.restore_checkpoint(svc, ALICE, "web", "c1", host="h9")
    assert run_jobs(svc) == []


@pytest.mark.parametrize(
    ("requires", "info", "expected"),
    [
        ({"domain_type": "qemu"}, {"domain_type": "kvm"}, "saved under qemu"),
        ({"domain_type": "qemu", "qemu_version": "8.2.0"}, {}, "QEMU 8.2.0"),
        ({"domain_type": "qemu", "machine": "pc-q35-8.2"}, {}, "machine type pc-q35-8.2"),
        (
            {"domain_type": "qemu", "cpu_mode": "host-passthrough", "cpu_model": "EPYC"},
            {"cpu_model": "Skylake"},
            "EPYC",
        ),
        ({"domain_type": "qemu", "arch": "aarch64"}, {}, "aarch64"),
    ],
)
def test_each_incompatibility_is_named(
    requires: dict[str, Any], info: dict[str, Any], expected: str
) -> None:
    host: dict[str, Any] = {
        "version": "1",
        "hostname": "h",
        "uptime_seconds": 1.0,
        "capabilities": [],
        "domain_type": "qemu",
        "kvm": False,
        "vcpus": 1,
        "memory_mib": 1024,
        "qemu_version": "7.2.0",
        "machine_types": ["pc", "pc-i440fx-7.2"],
        "cpu_model": "Skylake",
        "arch": "x86_64",
    }
    [reason] = checkpoints.incompatibilities(requires, "h2", ServerInfo(**{**host, **info}))
    assert expected in reason
    # An older QEMU's state, a machine type the host has, the same CPU: it can.
    same = {"domain_type": "qemu", "qemu_version": "7.1.0", "machine": "pc-i440fx-7.2"}
    assert checkpoints.incompatibilities(same, "h2", ServerInfo(**host)) == []


# -- listing and deleting -----------------------------------------------------------------


def test_list_delete_and_an_instance_takes_its_checkpoints_with_it(svc: Services) -> None:
    take(svc, "c1")
    take(svc, "c2")
    names = [c["name"] for c in checkpoints.list_checkpoints(svc, ALICE, "web")["checkpoints"]]
    assert names == ["c1", "c2"]
    assert len(checkpoints.list_checkpoints(svc, ALICE)["checkpoints"]) == 2
    assert checkpoints.list_checkpoints(svc, BOB)["checkpoints"] == []
    files = [Path(str(i.location).removeprefix("file://")) for i in checkpoint_images(svc)]
    assert len(files) == 6 and all(f.exists() for f in files)

    with pytest.raises(Exception, match="does not exist"):  # not Bob's to see
        checkpoints.delete_checkpoint(svc, BOB, "i-web", "c1")
    checkpoints.delete_checkpoint(svc, ALICE, "web", "c1")
    [job] = run_jobs(svc)
    assert job.status == "succeeded", job.error
    left = checkpoints.list_checkpoints(svc, ALICE, "web")["checkpoints"]
    assert [c["name"] for c in left] == ["c2"]
    assert len(checkpoint_images(svc)) == 3 and sum(f.exists() for f in files) == 3

    with svc.db.write() as s:
        row = s.get(Instance, "i-web")
        assert row is not None
        delete_instance(s, svc.jobs, row)
    jobs = run_jobs(svc)
    assert [j.status for j in jobs if j.kind == "instance.delete"] == ["succeeded"], jobs
    with svc.db.read() as s:
        assert list(s.scalars(select(Checkpoint))) == []
    assert checkpoint_images(svc) == [] and not any(f.exists() for f in files)


# -- routes -------------------------------------------------------------------------------


def test_the_routes_answer_over_http(svc: Services) -> None:
    """Through the API as built (auth and all): POST /instances/{ref}/{action} must not take
    POST .../checkpoints (Starlette tries routes in order)."""
    from fastapi.testclient import TestClient

    from lamina.api.app import create_app
    from lamina.identity.signing import LaminaAuth
    from lamina.identity.users import add_user

    with svc.db.write() as s:
        _, key = add_user(s, svc.box, access_key="root", email="r@example.org", role="admin")
    auth = LaminaAuth("root", key.secret)
    with TestClient(create_app(svc, background=False)) as http:
        made = http.post("/instances/web/checkpoints", json={"name": "c1"}, auth=auth)
        assert made.status_code == 202, made.text
        assert made.json()["job"]["kind"] == "checkpoint.create"
        run_jobs(svc)
        listed = http.get("/instances/web/checkpoints", auth=auth).json()["checkpoints"]
        assert [c["name"] for c in listed] == ["c1"]
        assert http.get("/checkpoints", auth=auth).json()["checkpoints"] == listed
        shown = http.get("/instances/web/checkpoints/c1", auth=auth).json()["checkpoint"]
        assert shown["status"] == "available"
        restore = http.post("/instances/web/checkpoints/c1/restore", json={}, auth=auth)
        assert restore.status_code == 202 and restore.json()["job"]["kind"] == "checkpoint.restore"
        run_jobs(svc)
        gone = http.delete("/instances/web/checkpoints/c1", auth=auth)
        assert gone.status_code == 202 and gone.json()["job"]["kind"] == "checkpoint.delete"
        missing = http.get("/instances/web/checkpoints/nope", auth=auth)
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
