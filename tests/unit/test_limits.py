"""Sizes and byte quotas, checked before anything starts (issue 12, item 9): through the real
app in-process, signed as a member with quotas; volume servers are the fakes of
``test_volumes``. A refusal is a 413 (``too_large`` or ``quota_exceeded``) with nothing
recorded: no image row, no staged bytes, no volume or snapshot row, no job."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from harness import bare_services
from test_volumes import GiB, World

from lamina.api.app import create_app
from lamina.compute.models import Host
from lamina.identity.signing import LaminaAuth
from lamina.identity.users import add_user
from lamina.images.models import Image
from lamina.images.stores.base import StoredObject
from lamina.services import Services

KiB = 1024
MiB = 1024 * KiB
TiB = 1024 * GiB


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    services.agents = World()  # type: ignore[assignment]
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
