"""The volume server through a real agent over mutual TLS: real qcow2 and raw volumes made by
qemu-img, exported with the machine's real tgtd and read back with QEMU's own iSCSI
initiator; then a real TCG guest under qemu:///system gets a volume hot-plugged and unplugged.

Volume ids are fresh per run, and every target the tests make is removed at the end.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_server import serve_agent
from harness import ROOT, wait_until

from lamina.agent.server import Agent
from lamina.agent.volumes import VolumeConfig
from lamina.errors import InvalidRequest, InvalidState, NotFound
from lamina.wire.client import AgentClient
from lamina.wire.pool import AgentPool
from lamina.wire.protocol import (
    IQN_PREFIX,
    DiskAttach,
    GuestDefinition,
    SnapshotCreate,
    VolumeCreate,
    VolumeExport,
    VolumeExtend,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@dataclass
class Served:
    agent: Agent
    client: AgentClient


@contextlib.contextmanager
def serve(root: Path, uri: str, backend: str) -> Iterator[Served]:
    """An agent on a free port of 127.0.0.1 (mutual TLS, as ``run_agent`` serves it)."""
    with serve_agent(root, uri, VolumeConfig(backend=backend)) as served:
        pool = AgentPool(served.ca.client_files())
        try:
            yield Served(served.agent, pool.for_address(served.address))
        finally:
            # Never leave a target behind.
            for export in served.agent.volumes.exports():
                served.agent.volumes.unexport(export.volume)
            pool.close()


@pytest.fixture(scope="module", autouse=True)
def tgtd() -> None:
    subprocess.run(["bash", str(ROOT / "scripts/start-tgtd.sh")], check=True)


@pytest.fixture(scope="module", params=["qcow2", "raw"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    with serve(
        tmp_path_factory.mktemp(f"vs-{request.param}"), "test:///default", request.param
    ) as s:
        yield s


def new_id(kind: str = "vol") -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def qemu_io(url: str, fmt: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, url], capture_output=True, text=True, timeout=60
    )


def url(export_iqn: str, host: str = "127.0.0.1") -> str:
    return f"iscsi://{host}/{export_iqn}/1"


def tgt_show() -> str:
    return subprocess.run(
        ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_create_extend_snapshot_copy_clone_delete(served: Served) -> None:
    client, fmt = served.client, served.agent.volumes.backend.export_format
    vol = new_id()
    info = client.volume_create(VolumeCreate(volume=vol, size_bytes=64 * MiB))
    assert (info.volume, info.size_bytes, info.export_format) == (vol, 64 * MiB, fmt)
    assert client.volume_create(VolumeCreate(volume=vol, size_bytes=64 * MiB)) == info
    path = served.agent.volumes.volume_path(vol)
    assert qemu_io(path, fmt, "write -P 0x5a 0 1M").returncode == 0
    info = client.volume_extend(vol, VolumeExtend(size_bytes=96 * MiB))
    assert info.size_bytes == 96 * MiB
    with pytest.raises(InvalidRequest):
        client.volume_extend(vol, VolumeExtend(size_bytes=32 * MiB))

    snap = new_id("snap")
    shot = client.snapshot_create(vol, SnapshotCreate(snapshot=snap))
    assert (shot.snapshot, shot.volume, shot.size_bytes) == (snap, vol, 96 * MiB)
    assert snap in [s.snapshot for s in client.snapshot_list()]

    copy = new_id()
    made = client.volume_create(
        VolumeCreate(volume=copy, size_bytes=128 * MiB, snapshot=snap, clone=False)
    )
    assert made.size_bytes == 128 * MiB and made.cloned_from is None
    clone = new_id()
    started = time.monotonic()
    made = client.volume_create(VolumeCreate(volume=clone, size_bytes=96 * MiB, snapshot=snap))
    took = time.monotonic() - started
    if served.agent.volumes.backend.can_clone:
        assert made.cloned_from == snap
        assert took < 1.0, f"a copy-on-write clone took {took:.2f}s"
        with pytest.raises(InvalidState, match="base of volume"):
            client.snapshot_delete(snap)
    for other in (copy, clone):
        assert (
            qemu_io(served.agent.volumes.volume_path(other), fmt, "read -P 0x5a 0 1M").returncode
            == 0
        )
    with pytest.raises(InvalidRequest):
        client.volume_create(VolumeCreate(volume=new_id(), size_bytes=MiB, snapshot=snap))
    with pytest.raises(NotFound):
        client.volume_create(VolumeCreate(volume=new_id(), size_bytes=MiB, snapshot=new_id("snap")))

    # The volume goes, its snapshot stays (independent), and so do volumes made from it.
    client.volume_delete(vol)
    client.volume_delete(vol)
    volumes = {v.volume for v in client.volume_list()}
    assert vol not in volumes and {copy, clone} <= volumes
    assert snap in [s.snapshot for s in client.snapshot_list()]
    for other in (clone, copy):
        client.volume_delete(other)
    client.snapshot_delete(snap)
    client.snapshot_delete(snap)
    assert snap not in [s.snapshot for s in client.snapshot_list()]


def test_export_through_iscsi(served: Served) -> None:
    client, fmt = served.client, served.agent.volumes.backend.export_format
    vol = new_id()
    client.volume_create(VolumeCreate(volume=vol, size_bytes=64 * MiB))
    started = time.monotonic()
    export = client.volume_export(vol, VolumeExport(initiator_address="127.0.0.1"))
    print(f"export took {time.monotonic() - started:.3f}s")
    assert export.iqn == f"{IQN_PREFIX}{vol}" and export.lun == 1
    assert export.portal == "127.0.0.1:3260" and export.export_format == fmt
    assert client.volume_export(vol, VolumeExport(initiator_address="127.0.0.1")) == export
    assert export in client.export_list()
    with pytest.raises(InvalidState, match="already exported"):
        client.volume_export(vol, VolumeExport(initiator_address="127.0.0.3"))
    with pytest.raises(InvalidState, match="exported"):
        client.volume_delete(vol)
    with pytest.raises(InvalidState, match="exported"):
        client.volume_extend(vol, VolumeExtend(size_bytes=128 * MiB))

    info = subprocess.run(
        ["qemu-img", "info", url(export.iqn)], capture_output=True, text=True, check=True
    ).stdout
    assert f"file format: {fmt}" in info and "64 MiB" in info
    # Written through iSCSI (all of it, up to the end), read back from the volume itself.
    for command in ("write -P 0x5a 0 1M", "write -P 0x33 63M 1M"):
        result = qemu_io(url(export.iqn), fmt, command)
        assert result.returncode == 0 and "wrote" in result.stdout, result.stdout + result.stderr
    path = served.agent.volumes.volume_path(vol)
    result = qemu_io(path, fmt, "read -P 0x5a 0 1M")
    assert result.returncode == 0 and "read 1048576" in result.stdout, result.stdout
    assert qemu_io(path, fmt, "read -P 0x33 63M 1M").returncode == 0
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "check", "-U", path], check=True, capture_output=True)

    client.volume_unexport(vol)
    client.volume_unexport(vol)
    assert export.iqn not in tgt_show()
    assert vol not in [e.volume for e in client.export_list()]
    client.volume_delete(vol)


def test_export_is_bound_to_one_initiator_address(served: Served) -> None:
    client, fmt = served.client, served.agent.volumes.backend.export_format
    vol = new_id()
    client.volume_create(VolumeCreate(volume=vol, size_bytes=16 * MiB))
    with pytest.raises(InvalidRequest):
        client.volume_export(vol, VolumeExport(initiator_address="ALL"))
    with pytest.raises(NotFound):
        client.volume_export(new_id(), VolumeExport(initiator_address="127.0.0.1"))
    # Bound to 127.0.0.2: QEMU connecting to 127.0.0.1 comes from 127.0.0.1 and is refused.
    export = client.volume_export(vol, VolumeExport(initiator_address="127.0.0.2"))
    assert export.initiator_address == "127.0.0.2"
    refused = qemu_io(url(export.iqn), fmt, "read 0 4k")
    assert refused.returncode != 0 or "read" not in refused.stdout, refused.stdout
    assert "Target not found" in refused.stderr or "Failed to log in" in refused.stderr
    # (The same export to 127.0.0.1 is read in test_export_through_iscsi: a connection from
    # loopback always comes from 127.0.0.1, so the allowed side is checked there.)
    client.volume_unexport(vol)
    client.volume_delete(vol)


def test_volume_routes_of_a_server_that_is_not_one(tmp_path: Path) -> None:
    from lamina.agent.drivers.fake import FakeHypervisor

    agent = Agent(tmp_path, FakeHypervisor(), VolumeConfig(enabled=False))
    from lamina.errors import NotSupported

    with pytest.raises(NotSupported):
        agent.volumes.volumes()


# -- a real guest --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-guest.sh"), str(out)], check=True)
    return out


def domblklist(name: str) -> str:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", "domblklist", name, "--details"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_hot_plug_into_a_real_guest(tmp_path: Path, sample: Path) -> None:
    with serve(tmp_path, "qemu:///system", "qcow2") as s:
        client = s.client
        kernel = sample / "vmlinux" if (sample / "vmlinux").exists() else sample / "vmlinuz"
        k = client.cache_install(str(kernel)).sha256
        i = client.cache_install(str(sample / "initrd.img")).sha256
        name = f"t-vol-{uuid.uuid4().hex[:8]}"
        vol = new_id()
        client.define(
            name,
            GuestDefinition(vcpus=1, memory_mib=128, kernel=k, initrd=i, cmdline="console=ttyS0"),
        )
        try:
            client.act(name, "start")
            wait_until(
                lambda: "lamina-sample: booted" in client.console(name).data,
                90,
                "the guest booting",
            )
            client.volume_create(VolumeCreate(volume=vol, size_bytes=64 * MiB))
            export = client.volume_export(vol, VolumeExport(initiator_address="127.0.0.1"))
            disk = DiskAttach(iqn=export.iqn, portal=export.portal, format="qcow2", serial=vol)
            started = time.monotonic()
            client.guest_attach_disk(name, "vdb", disk)
            attach = time.monotonic() - started
            client.guest_attach_disk(name, "vdb", disk)  # idempotent
            listed = domblklist(name)
            assert "vdb" in listed and f"{export.iqn}/1" in listed, listed
            live = subprocess.run(
                ["virsh", "-c", "qemu:///system", "dumpxml", name],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert f"<serial>{vol}</serial>" in live
            disks = {d.target: d.source for d in client.guest_disks(name)}
            assert disks["vdb"] == f"iscsi://127.0.0.1:3260/{export.iqn}/1"
            # The guest's QEMU is logged in to the target.
            assert "Initiator:" in tgt_show().split(export.iqn, 1)[1].split("Target ", 1)[0]

            started = time.monotonic()
            client.guest_detach_disk(name, "vdb")
            detach = time.monotonic() - started
            client.guest_detach_disk(name, "vdb")  # idempotent
            assert "vdb" not in domblklist(name)
            assert "vdb" not in {d.target for d in client.guest_disks(name)}
            print(f"attach {attach:.3f}s, detach {detach:.3f}s of a running TCG guest")
            client.volume_unexport(vol)
            client.volume_delete(vol)
        finally:
            client.undefine(name)
