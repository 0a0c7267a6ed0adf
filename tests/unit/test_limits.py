"""Sizes and byte quotas, checked before anything starts (issue 12, item 9): through the real
app in-process, signed as a member with quotas; volume servers are the fakes of
``test_volumes``. A refusal is a 413 (``too_large`` or ``quota_exceeded``) with nothing
recorded: no image row, no staged bytes, no volume or snapshot row, no job."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from harness import bare_services
from test_volumes import GiB, World, run_jobs

from lamina.agent.cache import DownloadTracker
from lamina.agent.volumes import VolumeConfig, VolumeServer
from lamina.api.app import create_app
from lamina.compute.models import Host
from lamina.errors import QuotaExceeded, TooLarge
from lamina.identity.signing import LaminaAuth
from lamina.identity.users import add_user
from lamina.images.models import Image
from lamina.jobs.models import Job
from lamina.services import Services
from lamina.stores.base import StoredObject
from lamina.volumes.models import Snapshot, Volume
from lamina.wire.protocol import VolumeCreate, VolumeExtend

KiB = 1024
MiB = 1024 * KiB
TiB = 1024 * GiB


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    services.agents = World(tmp_path / "hosts")  # type: ignore[assignment]
    with services.db.write() as s:
        s.add(
            Host(
                id="h-store",
                name="store",
                address="10.0.0.1:7000",
                status="up",
                cert_fingerprint="fp-store",
            )
        )
    try:
        yield services
    finally:
        services.close()


class Cloud:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.http = TestClient(create_app(svc, background=False))
        self.auth: dict[str, LaminaAuth] = {}
        self.ids: dict[str, str] = {}

    def user(self, name: str, role: str = "member", **quotas: int | None) -> None:
        with self.svc.db.write() as s:
            user, key = add_user(
                s,
                self.svc.box,
                access_key=name,
                email=f"{name}@example.org",
                role=role,
                quotas=quotas,
            )
            self.ids[name] = user.id
        self.auth[name] = LaminaAuth(name, key.secret)

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, auth=self.auth[who], **kwargs)


@pytest.fixture
def cloud(svc: Services) -> Iterator[Cloud]:
    c = Cloud(svc)
    c.user("admin", "admin")
    c.user("alice", image_bytes=MiB, volume_bytes=10 * GiB)
    with c.http:
        yield c


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


def images(svc: Services) -> list[Image]:
    with svc.db.read() as s:
        return list(s.query(Image).order_by(Image.created_at))


def upload(data: bytes, **attrs: str) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "X-Image-Meta-Sha256": hashlib.sha256(data).hexdigest(),
        **{f"X-Image-Meta-{k}": v for k, v in attrs.items()},
    }


def chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 64 * KiB):
        yield data[i : i + 64 * KiB]


# -- images -------------------------------------------------------------------------------


def test_a_resumable_upload_of_10_18_bytes_is_refused_at_once(cloud: Cloud) -> None:
    locked = cloud.call("admin", "POST", "/images", headers={"X-Image-Meta-Name": "big"})
    assert locked.status_code == 201, locked.text
    image_id = locked.json()["image"]["id"]
    started = cloud.call(
        "admin", "POST", f"/images/{image_id}/upload", json={"size": 10**18, "sha256": "0" * 64}
    )
    assert error(started) == (413, "too_large"), started.text
    body = started.json()
    assert body["details"]["requested"] == 10**18 and body["details"]["limit"] < 10**18
    [image] = images(cloud.svc)
    assert (image.status, image.upload_size) == ("locked", None)
    assert not list((cloud.svc.settings.data_dir / "uploads").glob("*.part"))


@pytest.mark.parametrize(
    "headers",
    [{"X-Image-Meta-Size": str(2 * TiB)}, {"Content-Length": str(2 * TiB)}],
    ids=["x-image-meta-size", "content-length"],
)
def test_a_plain_upload_declaring_too_much_leaves_no_image(
    cloud: Cloud, headers: dict[str, str]
) -> None:
    data = os.urandom(KiB)
    response = cloud.call(
        "admin",
        "POST",
        "/images",
        headers={**upload(data, Name="big"), **headers},
        content=chunks(data),
    )
    assert error(response) == (413, "too_large"), response.text
    assert "images.max_size_bytes" in response.json()["message"]
    assert images(cloud.svc) == []


def test_the_file_store_free_space_is_a_limit(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(cloud.svc.stores["file"]), "room", lambda self: 100 * KiB)
    data = os.urandom(200 * KiB)
    response = cloud.call("admin", "POST", "/images", headers=upload(data, Name="x"), content=data)
    assert error(response) == (413, "too_large"), response.text
    assert "file store" in response.json()["message"]
    assert images(cloud.svc) == []


def test_an_upload_past_the_image_bytes_quota_is_refused_saying_what_is_used(
    cloud: Cloud,
) -> None:
    first = os.urandom(600 * KiB)
    ok = cloud.call("alice", "POST", "/images", headers=upload(first, Name="a"), content=first)
    assert ok.status_code == 201, ok.text

    second = os.urandom(600 * KiB)
    refused = cloud.call(
        "alice", "POST", "/images", headers=upload(second, Name="b"), content=second
    )
    assert error(refused) == (413, "quota_exceeded"), refused.text
    assert refused.json()["details"] == {
        "quota": "image_bytes",
        "limit": MiB,
        "used": 600 * KiB,
        "requested": 600 * KiB,
    }
    assert [i.name for i in images(cloud.svc)] == ["a"]
    # The administrator, without quotas, is not limited by alice's.
    done = cloud.call("admin", "POST", "/images", headers=upload(second, Name="c"), content=second)
    assert done.status_code == 201, done.text


def test_uploads_in_progress_count_against_the_quota(cloud: Cloud) -> None:
    locked = cloud.call("alice", "POST", "/images", headers={"X-Image-Meta-Name": "slow"})
    image_id = locked.json()["image"]["id"]
    data = os.urandom(600 * KiB)
    started = cloud.call(
        "alice",
        "POST",
        f"/images/{image_id}/upload",
        json={"size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
    )
    assert started.status_code == 201, started.text

    other = os.urandom(600 * KiB)
    refused = cloud.call("alice", "POST", "/images", headers=upload(other, Name="b"), content=other)
    assert error(refused) == (413, "quota_exceeded"), refused.text
    assert refused.json()["details"]["used"] == 600 * KiB


def test_an_upload_of_undeclared_size_is_cut_off_at_the_quota(cloud: Cloud) -> None:
    data = os.urandom(2 * MiB)
    response = cloud.call(
        "alice", "POST", "/images", headers=upload(data, Name="stream"), content=chunks(data)
    )
    assert error(response) == (413, "quota_exceeded"), response.text
    [image] = images(cloud.svc)
    assert image.status == "error" and image.size is None
    assert os.listdir(cloud.svc.settings.image_root) == []


def test_a_body_longer_than_its_declared_size_is_refused(cloud: Cloud) -> None:
    data = os.urandom(300 * KiB)
    response = cloud.call(
        "admin",
        "POST",
        "/images",
        headers={**upload(data, Name="liar"), "X-Image-Meta-Size": str(100 * KiB)},
        content=data,
    )
    assert response.status_code == 400, response.text
    assert images(cloud.svc) == []


def test_a_location_of_a_huge_file_is_refused_and_leaves_no_image(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    http_store = cloud.svc.stores["http"]
    monkeypatch.setattr(http_store, "probe", lambda location: StoredObject(location, 2 * TiB))
    response = cloud.call(
        "admin",
        "POST",
        "/images",
        headers={"X-Image-Meta-Name": "far", "X-Image-Meta-Location": "http://files.test/x"},
    )
    assert error(response) == (413, "too_large"), response.text
    assert images(cloud.svc) == []

    # The same on a locked image: refused, and the image is locked again, not uploading.
    monkeypatch.setattr(http_store, "probe", lambda location: StoredObject(location, 2 * MiB))
    locked = cloud.call(
        "alice", "POST", "/images", headers={"X-Image-Meta-Name": "l", "X-Image-Meta-Store": "http"}
    )
    image_id = locked.json()["image"]["id"]
    put = cloud.call(
        "alice",
        "PUT",
        f"/images/{image_id}",
        headers={"X-Image-Meta-Location": "http://files.test/y"},
    )
    assert error(put) == (413, "quota_exceeded"), put.text
    [image] = images(cloud.svc)
    assert image.status == "locked"


# -- volumes ------------------------------------------------------------------------------


def jobs(svc: Services) -> list[Job]:
    with svc.db.read() as s:
        return list(s.query(Job))


def volumes(svc: Services) -> list[Volume]:
    with svc.db.read() as s:
        return list(s.query(Volume))


def test_a_64_tib_volume_is_refused_at_once(cloud: Cloud) -> None:
    response = cloud.call("admin", "POST", "/volumes", json={"size_bytes": 64 * TiB})
    assert error(response) == (413, "too_large"), response.text
    assert "volumes.max_size_bytes" in response.json()["message"]
    assert volumes(cloud.svc) == [] and jobs(cloud.svc) == []


def test_a_volume_larger_than_the_free_space_of_its_server_is_refused(cloud: Cloud) -> None:
    world: Any = cloud.svc.agents
    world.volume_free = 5 * GiB
    response = cloud.call("admin", "POST", "/volumes", json={"size_bytes": 6 * GiB})
    assert error(response) == (413, "too_large"), response.text
    assert "'store' has 5368709120 bytes free" in response.json()["message"]
    assert volumes(cloud.svc) == [] and jobs(cloud.svc) == []


def test_volume_bytes_count_volumes_and_snapshots(cloud: Cloud) -> None:
    made = cloud.call("alice", "POST", "/volumes", json={"size_bytes": 4 * GiB})
    assert made.status_code == 202, made.text
    volume_id = made.json()["volume"]["id"]
    [job] = run_jobs(cloud.svc)
    assert job.status == "succeeded", job.error

    too_big = cloud.call("alice", "POST", "/volumes", json={"size_bytes": 7 * GiB})
    assert error(too_big) == (413, "quota_exceeded"), too_big.text
    assert too_big.json()["details"] == {
        "quota": "volume_bytes",
        "limit": 10 * GiB,
        "used": 4 * GiB,
        "requested": 7 * GiB,
    }

    snap = cloud.call("alice", "POST", "/snapshots", json={"volume": volume_id})
    assert snap.status_code == 202, snap.text
    [job] = run_jobs(cloud.svc)
    assert job.status == "succeeded", job.error
    snapshot_id = snap.json()["snapshot"]["id"]

    # 8 GiB held: a second snapshot (4), an extend by 3 or a 3 GiB copy would pass 10.
    second = cloud.call("alice", "POST", "/snapshots", json={"volume": volume_id})
    assert error(second) == (413, "quota_exceeded"), second.text
    grown = cloud.call(
        "alice", "POST", f"/volumes/{volume_id}/extend", json={"size_bytes": 7 * GiB}
    )
    assert error(grown) == (413, "quota_exceeded"), grown.text
    assert grown.json()["details"]["requested"] == 3 * GiB
    copy = cloud.call(
        "alice", "POST", "/volumes", json={"snapshot": snapshot_id, "size_bytes": 4 * GiB}
    )
    assert error(copy) == (413, "quota_exceeded"), copy.text

    with cloud.svc.db.read() as s:
        assert s.query(Snapshot).count() == 1
        assert [v.status for v in s.query(Volume)] == ["available"]
    assert all(j.status == "succeeded" for j in jobs(cloud.svc))
    # What fits still passes.
    ok = cloud.call("alice", "POST", f"/volumes/{volume_id}/extend", json={"size_bytes": 6 * GiB})
    assert ok.status_code == 202, ok.text


def test_an_extend_past_the_free_space_or_the_maximum_is_refused(cloud: Cloud) -> None:
    made = cloud.call("admin", "POST", "/volumes", json={"size_bytes": GiB})
    volume_id = made.json()["volume"]["id"]
    run_jobs(cloud.svc)
    world: Any = cloud.svc.agents
    world.volume_free = 2 * GiB
    beyond = cloud.call(
        "admin", "POST", f"/volumes/{volume_id}/extend", json={"size_bytes": 4 * GiB}
    )
    assert error(beyond) == (413, "too_large"), beyond.text
    huge = cloud.call(
        "admin", "POST", f"/volumes/{volume_id}/extend", json={"size_bytes": 64 * TiB}
    )
    assert error(huge) == (413, "too_large"), huge.text
    [row] = volumes(cloud.svc)
    assert (row.status, row.size_bytes) == ("available", GiB)
    assert [j.kind for j in jobs(cloud.svc)] == ["volume.create"]


# -- the volume server (agent) ------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> VolumeServer:
    return VolumeServer(
        VolumeConfig(backend="raw", root=tmp_path / "volumes"), tmp_path, DownloadTracker()
    )


def test_the_agent_refuses_a_volume_its_volume_root_cannot_hold(
    server: VolumeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage(server.root)
    assert server.free_bytes() == pytest.approx(real.free, rel=0.01)
    tight = real._replace(free=10 * MiB)
    monkeypatch.setattr("lamina.agent.volumes.shutil.disk_usage", lambda path: tight)

    with pytest.raises(TooLarge, match="only 10485760 bytes free"):
        server.create(VolumeCreate(volume="vol-0000000000000001", size_bytes=64 * TiB))
    assert os.listdir(server.root) == []

    made = server.create(VolumeCreate(volume="vol-0000000000000002", size_bytes=8 * MiB))
    with pytest.raises(TooLarge):
        server.extend(made.volume, VolumeExtend(size_bytes=20 * MiB))
    assert server.volume_info(made.volume).size_bytes == 8 * MiB
    assert server.extend(made.volume, VolumeExtend(size_bytes=16 * MiB)).size_bytes == 16 * MiB


# -- appliances: files copied from a channel into the repository ---------------------------


def test_an_appliance_install_whose_files_pass_the_limits_is_refused(cloud: Cloud) -> None:
    from lamina.appliances.install import check_sizes
    from lamina.identity.principal import Principal

    alice = Principal(cloud.ids["alice"], "alice", "member")
    admin = Principal(cloud.ids["admin"], "admin", "admin")

    def entries(*sizes: int) -> list[dict[str, Any]]:
        files = [{"sha256": f"{i:064x}", "size": size} for i, size in enumerate(sizes)]
        return [{"id": "a-1", "key": "k", "files": files}]

    with cloud.svc.db.write() as s:
        with pytest.raises(TooLarge, match="images.max_size_bytes"):
            check_sizes(s, cloud.svc, admin, entries(MiB, 2 * TiB))
        with pytest.raises(QuotaExceeded, match="image_bytes"):
            check_sizes(s, cloud.svc, alice, entries(600 * KiB, 600 * KiB))
        check_sizes(s, cloud.svc, alice, entries(300 * KiB, 600 * KiB))


@pytest.mark.parametrize("size", [b"\xc2\xb2", b"1e9", b"9" * 5000, b"-1"])
def test_a_declared_size_that_is_no_number_or_past_any_limit_is_refused_not_a_crash(
    cloud: Cloud, size: bytes
) -> None:
    # "²" (in UTF-8), which str.isdigit() takes for a digit and int() refuses. Starlette's
    # TestClient re-encodes header values as UTF-8, so these are the bytes the app sees (a
    # lone b"\xb2" would reach it as b"\xc2\xb2" anyway, and then differ from the bytes
    # LaminaAuth signed: every X-Image-Meta-* header is signed).
    data = os.urandom(KiB)
    response = cloud.call(
        "admin",
        "POST",
        "/images",
        headers={**upload(data, Name="odd"), "X-Image-Meta-Size": size},
        content=chunks(data),
    )
    assert response.status_code in (400, 413), response.text
    assert images(cloud.svc) == []
