"""The agent's half of a live migration, without a hypervisor: the source's definition
given the destination's paths, the disks it names, the status it answers as a migration
runs, completes, fails or is aborted (and after the agent restarted), and what ``forget``
and ``start`` refuse.

Written by helper ``sched`` beside the ``migrate`` branch (which had no unit tests): skipped
until ``lamina.agent.migration`` is merged. The hypervisor here is a stand-in that records
calls; the real one is exercised by the migration integration tests."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from types import SimpleNamespace
from typing import Any

import pytest

from lamina.errors import GuestNotFound, InvalidRequest, InvalidState, LaminaError

agent_migration = pytest.importorskip("lamina.agent.migration")
base = pytest.importorskip("lamina.agent.drivers.base")
protocol = pytest.importorskip("lamina.wire.protocol")

SOURCE_XML = """<domain type='qemu'>
  <name>lamina-x</name>
  <os><type>hvm</type><kernel>/src/cache/k</kernel><initrd>/src/cache/i</initrd></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/src/cache/layer0'/><target dev='vda'/><readonly/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/src/guests/lamina-x/instance.img'/><target dev='vdb'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/src/guests/lamina-x/config.img'/><target dev='vdc'/><readonly/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='iscsi' name='iqn.x/1'/><target dev='vdd'/>
    </disk>
    <serial type='file'><source path='/src/guests/lamina-x/console.log'/></serial>
    <console type='file'><source path='/src/guests/lamina-x/console.log'/></console>
  </devices>
</domain>"""


def test_the_disks_of_a_definition() -> None:
    assert agent_migration._file_disks(SOURCE_XML) == {
        "vda": "/src/cache/layer0",
        "vdb": "/src/guests/lamina-x/instance.img",
        "vdc": "/src/guests/lamina-x/config.img",
    }  # the network disk (a volume) is not a file
    assert agent_migration._readonly_disks(SOURCE_XML) == {"vda", "vdc"}


def test_the_destination_s_paths() -> None:
    paths = {"vda": "/dst/cache/layer0", "vdb": "/dst/g/instance.img", "vdc": "/dst/g/config.img"}
    xml = agent_migration.rewrite_paths(SOURCE_XML, paths, "/dst/k", "/dst/i", "/dst/g/c.log")
    root = ET.fromstring(xml)
    files = [s.get("file") for s in root.iterfind("devices/disk/source") if s.get("file")]
    assert files == ["/dst/cache/layer0", "/dst/g/instance.img", "/dst/g/config.img"]
    assert root.findtext("os/kernel") == "/dst/k" and root.findtext("os/initrd") == "/dst/i"
    assert {e.get("path") for e in root.iterfind("devices/*/source[@path]")} == {"/dst/g/c.log"}
    assert root.find("devices/disk[@type='network']/source").get("name") == "iqn.x/1"  # type: ignore[union-attr]
    assert "/src/" not in xml


def test_a_disk_without_a_counterpart_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="disk vdc has no counterpart"):
        agent_migration.rewrite_paths(SOURCE_XML, {"vda": "a", "vdb": "b"}, None, None, "c")


def test_no_kernel_keeps_the_source_s_boot() -> None:
    paths = {"vda": "a", "vdb": "b", "vdc": "c"}
    root = ET.fromstring(agent_migration.rewrite_paths(SOURCE_XML, paths, None, None, "l"))
    assert root.findtext("os/kernel") == "/src/cache/k"


class Hypervisor:
    """Stands for a driver whose migration blocks until released (or aborted)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.fail: str | None = None
        self.active = False
        self.progress = base.MigrationProgress(active=False)
        self.downtimes: list[int] = []
        self.state = "running"
        self.is_incoming = False
        self.undefined: list[str] = []

    def migrate(self, name: str, request: Any) -> None:
        self.active = True
        self.progress = base.MigrationProgress(
            active=True, memory_total=100, memory_remaining=40, memory_processed=60
        )
        self.release.wait(10)
        self.active = False
        if self.fail:
            raise LaminaError(self.fail)

    def migration_progress(self, name: str, completed: bool = False) -> Any:
        if name != "lamina-x":
            raise GuestNotFound(name)
        return self.progress if self.active else base.MigrationProgress(active=False)

    def set_migration_downtime(self, name: str, ms: int) -> None:
        self.downtimes.append(ms)

    def abort_migration(self, name: str) -> None:
        self.fail = "operation aborted: migration job: canceled by client"
        self.release.set()

    def info(self, name: str) -> Any:
        if name != "lamina-x":
            raise GuestNotFound(name)
        return SimpleNamespace(state=self.state)

    def incoming(self, name: str) -> bool:
        return self.is_incoming

    def undefine(self, name: str) -> None:
        self.undefined.append(name)


def start_request() -> Any:
    return protocol.MigrationStart(dest_uri="qemu+tls://h2/system", xml="<domain/>",
                                   max_downtime_ms=300)  # fmt: skip


@pytest.fixture
def hv() -> Any:
    return Hypervisor()


@pytest.fixture
def migrations(hv: Hypervisor) -> Any:
    agent = SimpleNamespace(hypervisor=hv, undefine=lambda name: hv.undefined.append(name))
    made = agent_migration.Migrations(agent)
    yield made
    hv.release.set()


def wait_state(migrations: Any, state: str) -> Any:
    for _ in range(200):
        status = migrations.status("lamina-x")
        if status.state == state:
            return status
        threading.Event().wait(0.02)
    raise AssertionError(f"never {state}: {status}")


def test_a_migration_runs_then_completes(migrations: Any, hv: Hypervisor) -> None:
    assert migrations.status("lamina-x").state == "none"
    first = migrations.start("lamina-x", start_request())
    assert first.state == "running"
    running = wait_state(migrations, "running")
    assert running.max_downtime_ms == 300
    # Asked again (a resumed job step): the same migration, not a second one.
    assert migrations.start("lamina-x", start_request()).state == "running"
    tuned = migrations.tune("lamina-x", 900)
    assert hv.downtimes == [900] and tuned.max_downtime_ms == 900
    wait_until_progress(migrations)
    hv.release.set()
    done = wait_state(migrations, "completed")
    assert done.error is None and done.memory_processed == 60


def wait_until_progress(migrations: Any) -> None:
    for _ in range(200):
        if migrations.status("lamina-x").memory_total == 100:
            return
        threading.Event().wait(0.02)
    raise AssertionError("no progress reported")


def test_a_failed_migration_says_why(migrations: Any, hv: Hypervisor) -> None:
    migrations.start("lamina-x", start_request())
    hv.fail = "unable to connect to server at 'h2:49152': Connection refused"
    hv.release.set()
    failed = wait_state(migrations, "failed")
    assert failed.error == "unable to connect to server at 'h2:49152': Connection refused"


def test_an_aborted_migration_is_cancelled(migrations: Any, hv: Hypervisor) -> None:
    migrations.start("lamina-x", start_request())
    wait_state(migrations, "running")
    migrations.abort("lamina-x")
    cancelled = migrations.status("lamina-x")
    assert cancelled.state == "cancelled" and "canceled by client" in (cancelled.error or "")
    migrations.abort("lamina-x")  # again: nothing to do
    migrations.abort("lamina-y")  # a guest not here: nothing to do


def test_after_a_restart_the_hypervisor_s_job_is_found(hv: Hypervisor) -> None:
    """A new agent process knows nothing of the migration its predecessor started; the
    hypervisor still runs it."""
    hv.active = True
    hv.progress = base.MigrationProgress(active=True, memory_total=100, memory_remaining=10)
    fresh = agent_migration.Migrations(SimpleNamespace(hypervisor=hv))
    status = fresh.status("lamina-x")
    assert status.state == "running" and status.memory_remaining == 10
    with pytest.raises(InvalidState, match="has a hypervisor job running"):
        fresh.start("lamina-x", start_request())


def test_forget_refuses_a_guest_that_still_runs_here(migrations: Any, hv: Hypervisor) -> None:
    with pytest.raises(InvalidState, match="still runs on this host"):
        migrations.forget("lamina-x")
    hv.state = "stopped"  # left: the definition goes
    migrations.forget("lamina-x")
    assert hv.undefined == ["lamina-x"]
    migrations.forget("lamina-y", keep_disks=True)  # not here at all: its leftovers go
    assert hv.undefined == ["lamina-x", "lamina-y"]


def test_the_status_carries_the_hypervisor_s_figures() -> None:
    progress = base.MigrationProgress(
        active=True, elapsed_ms=1500, memory_total=256, memory_processed=200,
        memory_remaining=56, disk_total=10, disk_processed=4, disk_remaining=6, dirty_rate=7,
        iteration=3, downtime_ms=None,
    )  # fmt: skip
    status = agent_migration._status("running", progress, 300, None)
    assert status.model_dump() == {
        "state": "running", "error": None, "elapsed_ms": 1500, "memory_total": 256,
        "memory_processed": 200, "memory_remaining": 56, "disk_total": 10,
        "disk_processed": 4, "disk_remaining": 6, "dirty_rate": 7, "iteration": 3,
        "max_downtime_ms": 300, "downtime_ms": None,
    }  # fmt: skip
    bare = agent_migration._status("failed", None, None, "boom")
    assert bare.state == "failed" and bare.error == "boom" and bare.memory_total == 0
