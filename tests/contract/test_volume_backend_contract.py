"""The contract every ``VolumeBackend`` passes: the fake of the unit tests
(``tests/fakes/volumes.py``) and the agent's volume server (``VolumeServer``) with the qcow2
and raw patterns, exporting through the host's real tgtd. ``make check`` runs the fake; the
real ones need tgtd and are marked ``integration`` (``make test``).

Volumes here are a few MiB: every operation is a ``qemu-img``, ``truncate`` or ``cp`` of a
sparse file, or one ``tgtadm`` call.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.agent.cache import DownloadTracker
from lamina.agent.fake_volumes import FakeVolumeBackend
from lamina.agent.volumes import VolumeBackend, VolumeConfig, VolumeServer
from lamina.errors import (
    Conflict,
    InvalidRequest,
    InvalidState,
    NotFound,
    TooLarge,
)
from lamina.wire.protocol import SnapshotCreate, VolumeCreate, VolumeExtend

MiB = 1024 * 1024
DEPLOYMENT = "0123456789abcdef"
PORTAL = "127.0.0.1:3260"


@dataclass
class Subject:
    volumes: VolumeBackend
    backend: str
    export_format: str
    can_clone: bool
    #: Make the backend report only this many bytes free.
    set_free: Callable[[int], None]


def _fake() -> Iterator[Subject]:
    fake = FakeVolumeBackend(portal=PORTAL, deployment=lambda: DEPLOYMENT)

    def set_free(free: int) -> None:
        fake.free = free

    yield Subject(fake, "qcow2", "qcow2", True, set_free)


def _real(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Subject]:
    if shutil.which("tgtadm") is None or not Path("/run/tgtd.pid").exists():
        pytest.fail("needs tgtd (scripts/start-tgtd.sh)")
    server = VolumeServer(
        VolumeConfig(backend=backend, root=tmp_path / "volumes", portal=PORTAL),
        tmp_path / "agent",
        DownloadTracker(),
        lambda: DEPLOYMENT,
    )

    def set_free(free: int) -> None:
        real = shutil.disk_usage(server.root)
        monkeypatch.setattr(
            "lamina.agent.volumes.shutil.disk_usage", lambda path: real._replace(free=free)
        )

    try:
        yield Subject(server, backend, server.backend.export_format, server.backend.can_clone,
                      set_free)  # fmt: skip
    finally:
        # tgtd is the machine's: leave no target behind.
        for export in server.exports():
            server.unexport(export.volume)


@pytest.fixture(
    params=[
        "fake",
        pytest.param("qcow2", marks=pytest.mark.integration),
        pytest.param("raw", marks=pytest.mark.integration),
    ]
)
def subject(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Subject]:
    if request.param == "fake":
        yield from _fake()
    else:
        yield from _real(request.param, tmp_path, monkeypatch)


@pytest.fixture
def volumes(subject: Subject) -> VolumeBackend:
    return subject.volumes


def vol() -> str:
    return f"vol-{uuid.uuid4().hex}"


def snap() -> str:
    return f"snap-{uuid.uuid4().hex}"


def made(volumes: VolumeBackend, size: int = 2 * MiB) -> str:
    volume = vol()
    volumes.create(VolumeCreate(volume=volume, size_bytes=size))
    return volume


# -- volumes -------------------------------------------------------------------------------


def test_create_then_info_and_list(subject: Subject, volumes: VolumeBackend) -> None:
    volume = vol()
    info = volumes.create(VolumeCreate(volume=volume, size_bytes=2 * MiB))
    assert (info.volume, info.size_bytes, info.backend, info.export_format) == (
        volume,
        2 * MiB,
        subject.backend,
        subject.export_format,
    )
    assert info.cloned_from is None and info.allocated_bytes >= 0
    assert volumes.volume_info(volume) == info
    assert volumes.volumes() == [info]
    # A retried request is answered with the volume as it is.
    again = volumes.create(VolumeCreate(volume=volume, size_bytes=4 * MiB))
    assert (again.volume, again.size_bytes) == (volume, 2 * MiB)
    assert len(volumes.volumes()) == 1


def test_extend_grows_only(volumes: VolumeBackend) -> None:
    volume = made(volumes)
    assert volumes.extend(volume, VolumeExtend(size_bytes=4 * MiB)).size_bytes == 4 * MiB
    assert volumes.extend(volume, VolumeExtend(size_bytes=4 * MiB)).size_bytes == 4 * MiB
    with pytest.raises(InvalidRequest):
        volumes.extend(volume, VolumeExtend(size_bytes=2 * MiB))
    assert volumes.volume_info(volume).size_bytes == 4 * MiB


def test_delete_is_idempotent(volumes: VolumeBackend) -> None:
    volume = made(volumes)
    volumes.delete(volume)
    with pytest.raises(NotFound):
        volumes.volume_info(volume)
    assert volumes.volumes() == []
    volumes.delete(volume)


def test_no_room_is_too_large_and_makes_nothing(subject: Subject, volumes: VolumeBackend) -> None:
    volume = made(volumes)
    subject.set_free(3 * MiB)
    with pytest.raises(TooLarge):
        volumes.create(VolumeCreate(volume=vol(), size_bytes=8 * MiB))
    with pytest.raises(TooLarge):
        volumes.extend(volume, VolumeExtend(size_bytes=8 * MiB))
    assert [(v.volume, v.size_bytes) for v in volumes.volumes()] == [(volume, 2 * MiB)]


def test_unknown_volumes_and_snapshots(volumes: VolumeBackend) -> None:
    volume, snapshot = vol(), snap()
    with pytest.raises(NotFound):
        volumes.volume_info(volume)
    with pytest.raises(NotFound):
        volumes.extend(volume, VolumeExtend(size_bytes=MiB))
    with pytest.raises(NotFound):
        volumes.snapshot(volume, SnapshotCreate(snapshot=snapshot))
    with pytest.raises(NotFound):
        volumes.export(volume, "127.0.0.1")
    with pytest.raises(NotFound):
        volumes.snapshot_info(snapshot)
    with pytest.raises(NotFound):
        volumes.create(VolumeCreate(volume=volume, size_bytes=MiB, snapshot=snapshot))
    with pytest.raises(NotFound):
        volumes.volume_info(volume)  # nothing was left half-made
    # Removing what is not there is a no-op.
    volumes.delete(volume)
    volumes.unexport(volume)
    volumes.delete_snapshot(snapshot)
    assert (volumes.volumes(), volumes.snapshots(), volumes.exports()) == ([], [], [])


@pytest.mark.parametrize("bad", ["vol-XYZ", "../etc", "snap-00000000", "vol-1234567"])
def test_ids_that_are_not_volume_ids_are_refused(volumes: VolumeBackend, bad: str) -> None:
    for call in (volumes.volume_info, volumes.delete, volumes.unexport):
        with pytest.raises(InvalidRequest):
            call(bad)


# -- snapshots -----------------------------------------------------------------------------


def test_snapshots_are_independent_of_their_volume(volumes: VolumeBackend) -> None:
    volume, snapshot = made(volumes), snap()
    info = volumes.snapshot(volume, SnapshotCreate(snapshot=snapshot))
    assert (info.snapshot, info.volume, info.size_bytes) == (snapshot, volume, 2 * MiB)
    assert volumes.snapshot(volume, SnapshotCreate(snapshot=snapshot)) == info  # a retry
    assert volumes.snapshot_info(snapshot) == info
    assert volumes.snapshots() == [info]
    other = made(volumes)
    with pytest.raises(Conflict):
        volumes.snapshot(other, SnapshotCreate(snapshot=snapshot))
    volumes.delete(volume)
    assert volumes.snapshot_info(snapshot).size_bytes == 2 * MiB
    volumes.delete_snapshot(snapshot)
    with pytest.raises(NotFound):
        volumes.snapshot_info(snapshot)
    volumes.delete_snapshot(snapshot)
    with pytest.raises(InvalidRequest):
        volumes.snapshot_info("vol-0000000000000001")


def test_a_volume_from_a_snapshot(subject: Subject, volumes: VolumeBackend) -> None:
    volume, snapshot = made(volumes), snap()
    volumes.snapshot(volume, SnapshotCreate(snapshot=snapshot))
    with pytest.raises(InvalidRequest):
        volumes.create(VolumeCreate(volume=vol(), size_bytes=MiB, snapshot=snapshot))

    copy = volumes.create(
        VolumeCreate(volume=vol(), size_bytes=4 * MiB, snapshot=snapshot, clone=False)
    )
    assert (copy.size_bytes, copy.cloned_from) == (4 * MiB, None)
    clone = volumes.create(VolumeCreate(volume=vol(), size_bytes=2 * MiB, snapshot=snapshot))
    assert clone.size_bytes == 2 * MiB
    assert clone.cloned_from == (snapshot if subject.can_clone else None)
    if subject.can_clone:
        with pytest.raises(InvalidState):
            volumes.delete_snapshot(snapshot)
        volumes.delete(clone.volume)
    volumes.delete_snapshot(snapshot)
    assert volumes.snapshots() == []
    assert {v.volume for v in volumes.volumes()} == {volume, copy.volume} | (
        set() if subject.can_clone else {clone.volume}
    )


# -- exports -------------------------------------------------------------------------------


def test_export_to_one_initiator(subject: Subject, volumes: VolumeBackend) -> None:
    volume = made(volumes)
    with pytest.raises(InvalidRequest):
        volumes.export(volume, "not-an-address")
    export = volumes.export(volume, "127.0.0.2")
    assert (export.volume, export.iqn, export.lun, export.portal) == (
        volume,
        f"iqn.2026-11.lamina:{volume}",
        1,
        PORTAL,
    )
    assert (export.initiator_address, export.export_format) == ("127.0.0.2", subject.export_format)
    assert export.tid >= 1
    assert export.deployment == DEPLOYMENT and export.created_at is not None
    assert volumes.export(volume, "127.0.0.2") == export  # the same export again
    with pytest.raises(InvalidState):
        volumes.export(volume, "127.0.0.3")
    assert volumes.exports() == [export]


def test_an_exported_volume_cannot_be_deleted_or_extended(volumes: VolumeBackend) -> None:
    volume = made(volumes)
    volumes.export(volume, "127.0.0.2")
    with pytest.raises(InvalidState):
        volumes.delete(volume)
    with pytest.raises(InvalidState):
        volumes.extend(volume, VolumeExtend(size_bytes=4 * MiB))
    assert volumes.volume_info(volume).size_bytes == 2 * MiB
    volumes.unexport(volume)
    assert volumes.exports() == []
    volumes.unexport(volume)  # idempotent
    volumes.extend(volume, VolumeExtend(size_bytes=4 * MiB))
    volumes.delete(volume)
    assert volumes.volumes() == []


def test_each_export_has_its_own_target(volumes: VolumeBackend) -> None:
    first, second = made(volumes), made(volumes)
    volumes.export(first, "127.0.0.2")
    volumes.export(second, "127.0.0.2")
    found = {e.volume: e for e in volumes.exports()}
    assert set(found) == {first, second}
    assert found[first].tid != found[second].tid
    volumes.unexport(first)
    assert [e.volume for e in volumes.exports()] == [second]
