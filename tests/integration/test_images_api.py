"""The image API (VISOR table 4.2) against a running manager: every response code of table
4.3, and the upload lifecycle's failures (disconnect, checksum mismatch, manager killed)
leaving the image in ``error`` with nothing left in the store."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from harness import Cloud, wait_until

from lamina.identity import signing

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def meta(**attrs: str) -> dict[str, str]:
    return {f"X-Image-Meta-{k.replace('_', '-')}": v for k, v in attrs.items()}


def upload_headers(data: bytes, **attrs: str) -> dict[str, str]:
    return {
        **meta(**attrs),
        "Content-Type": "application/octet-stream",
        "X-Image-Meta-Sha256": hashlib.sha256(data).hexdigest(),
    }


def stream(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 256 * 1024):
        yield data[i : i + 256 * 1024]


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


@pytest.fixture(params=["file", "s3"])
def cloud(request: pytest.FixtureRequest, make_cloud: Callable[..., Cloud]) -> Cloud:
    """A manager whose uploads go to the file store, or to S3 on a real Swift."""
    env: dict[str, str] = {}
    if request.param == "s3":
        swift = request.getfixturevalue("s3_server")
        env = {
            "LAMINA_IMAGES__STORES": '["file", "s3", "http"]',
            "LAMINA_IMAGES__DEFAULT_STORE": "s3",
            "LAMINA_IMAGES__S3_ENDPOINT": swift.endpoint_url,
            "LAMINA_IMAGES__S3_BUCKET": f"lamina-{os.urandom(4).hex()}",
            "LAMINA_IMAGES__S3_ACCESS_KEY": swift.access_key,
            "LAMINA_IMAGES__S3_SECRET_KEY": swift.secret_key,
        }
    c = make_cloud(**env)
    c.start_manager()
    c.store = request.param  # type: ignore[attr-defined]
    c.swift = swift if request.param == "s3" else None  # type: ignore[attr-defined]
    return c


@pytest.fixture
def http(cloud: Cloud) -> httpx.Client:
    return cloud.http


@pytest.fixture
def data() -> bytes:
    return os.urandom(3 * MiB + 7)


def store_files(cloud: Cloud) -> list[str]:
    """What the cloud's upload store holds: files (partial ones included) or S3 objects and
    unfinished multipart uploads."""
    if cloud.store == "file":  # type: ignore[attr-defined]
        root = cloud.root / "manager" / "images"
        return sorted(p.name for p in root.iterdir()) if root.exists() else []
    s3: Any = cloud.swift.client()  # type: ignore[attr-defined]
    bucket = cloud.base_env["LAMINA_IMAGES__S3_BUCKET"]
    try:
        objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except s3.exceptions.NoSuchBucket:
        return []
    return sorted([o["Key"] for o in objects] + [f".partial-{u['Key']}" for u in uploads])


def place_object(cloud: Cloud, key: str, data: bytes) -> None:
    """Put an object where the store will want to write image ``key``."""
    if cloud.store == "file":  # type: ignore[attr-defined]
        root = cloud.root / "manager" / "images"
        root.mkdir(exist_ok=True)
        (root / key).write_bytes(data)
        return
    s3: Any = cloud.swift.client()  # type: ignore[attr-defined]
    bucket = cloud.base_env["LAMINA_IMAGES__S3_BUCKET"]
    try:
        s3.create_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - it exists already
        pass
    s3.put_object(Bucket=bucket, Key=f"images/{key}", Body=data)


def remove_object(cloud: Cloud, key: str) -> None:
    if cloud.store == "file":  # type: ignore[attr-defined]
        (cloud.root / "manager" / "images" / key).unlink()
        return
    s3: Any = cloud.swift.client()  # type: ignore[attr-defined]
    s3.delete_object(Bucket=cloud.base_env["LAMINA_IMAGES__S3_BUCKET"], Key=f"images/{key}")


def add(http: httpx.Client, data: bytes, **attrs: str) -> dict[str, str]:
    attrs.setdefault("name", "img")
    response = http.post("/images", headers=upload_headers(data, **attrs), content=stream(data))
    assert response.status_code == 201, response.text
    return dict(response.json()["image"])


def test_register_upload_download_update_delete(
    cloud: Cloud, http: httpx.Client, data: bytes
) -> None:
    image = add(http, data, name="Debian 12", architecture="x86_64", format="raw", os_version="12")
    assert image["status"] == "available" and image["size"] == len(data)
    assert image["checksum"] == hashlib.md5(data).hexdigest()
    assert image["sha256"] == hashlib.sha256(data).hexdigest()
    assert image["os_version"] == "12" and image["store"] == cloud.store  # type: ignore[attr-defined]
    got = http.get(f"/images/{image['id']}")
    assert got.content == data and got.headers["x-image-meta-name"] == "Debian 12"
    part = http.get(f"/images/{image['id']}", headers={"Range": "bytes=-5"})
    assert part.status_code == 206 and part.content == data[-5:]
    head = http.head(f"/images/{image['id']}")
    assert head.headers["x-image-meta-access_count"] == "2"
    assert head.headers["x-image-meta-status"] == "available"
    listed = http.get("/images", params={"os_version": "12"}).json()["images"]
    assert [i["id"] for i in listed] == [image["id"]]
    updated = http.put(f"/images/{image['id']}", headers=meta(name="Debian 12.5"))
    assert updated.json()["image"]["name"] == "Debian 12.5"
    deleted = http.delete(f"/images/{image['id']}").json()["image"]
    assert deleted["name"] == "Debian 12.5"  # the metadata, to re-post it
    assert store_files(cloud) == []
    nothing = http.get("/images")
    assert code(nothing) == (404, "not_found")  # VISOR: "No images were found"


def test_a_locked_image_takes_its_file_later(http: httpx.Client, data: bytes) -> None:
    locked = http.post("/images", headers=meta(name="later")).json()["image"]
    assert locked["status"] == "locked"
    assert code(http.get(f"/images/{locked['id']}")) == (404, "not_found")  # no file yet
    put = http.put(f"/images/{locked['id']}", headers=upload_headers(data), content=stream(data))
    assert put.status_code == 200 and put.json()["image"]["status"] == "available"
    again = http.put(f"/images/{locked['id']}", headers=upload_headers(data), content=stream(data))
    assert code(again) == (409, "invalid_state")  # cannot assign a file to an available image
    actions = [e["action"] for e in http.get(f"/images/{locked['id']}/history").json()["history"]]
    assert actions == ["register", "upload-start", "upload"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (meta(name="x", architecture="sparc"), "architecture 'sparc' is not one of"),
        (meta(name="x", format="exe"), "format 'exe' is not one of"),
        (meta(architecture="x86_64"), "an image needs a name"),
        (meta(name="x", status="available"), "'status' is managed by Lamina"),
        (meta(name="x", kernel="00000000-0000-0000-0000-000000000000"), "not a registered image"),
        (meta(name="x", store="cumulus"), "unsupported store backend 'cumulus'"),
        (meta(name="x", **{"9lives": "1"}), "attribute name"),
    ],
)
def test_failed_metadata_validation_is_400(
    http: httpx.Client, headers: dict[str, str], message: str
) -> None:
    response = http.post("/images", headers=headers)
    assert code(response) == (400, "invalid_request")
    assert message in response.json()["message"]


def test_file_and_location_rules(http: httpx.Client, data: bytes) -> None:
    both = http.post(
        "/images",
        headers={**upload_headers(data, name="x"), "X-Image-Meta-Location": "http://127.0.0.1:1/x"},
        content=stream(data),
    )
    assert code(both) == (400, "invalid_request") and "not both" in both.json()["message"]
    read_only = http.post(
        "/images", headers=upload_headers(data, name="x", store="http"), content=stream(data)
    )
    assert code(read_only) == (400, "invalid_request") and "read-only" in read_only.text
    nothing = http.post("/images", headers=meta(name="locked")).json()["image"]
    assert code(http.put(f"/images/{nothing['id']}")) == (400, "invalid_request")
    undeclared = http.post(
        "/images",
        headers={**meta(name="x"), "Content-Type": "application/octet-stream"},
        content=stream(data),
    )
    assert code(undeclared) == (400, "invalid_request")
    assert "declare X-Image-Meta-Sha256" in undeclared.json()["message"]


def test_not_found_rows(http: httpx.Client) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for method in ("GET", "PUT", "DELETE"):
        response = http.request(method, f"/images/{missing}", headers=meta(name="x"))
        assert code(response) == (404, "not_found"), method
    assert http.head(f"/images/{missing}").status_code == 404
    nothing = http.get("/images", params={"name": "no such image"})
    assert code(nothing) == (404, "not_found") and "no images were found" in nothing.text


def test_a_missing_file_is_404(cloud: Cloud, http: httpx.Client, data: bytes) -> None:
    image = add(http, data)
    remove_object(cloud, image["id"])
    assert code(http.get(f"/images/{image['id']}")) == (404, "not_found")


def test_a_file_already_in_the_store_is_409(cloud: Cloud, http: httpx.Client, data: bytes) -> None:
    locked = http.post("/images", headers=meta(name="clash")).json()["image"]
    place_object(cloud, locked["id"], b"already here")
    response = http.put(
        f"/images/{locked['id']}", headers=upload_headers(data), content=stream(data)
    )
    assert code(response) == (409, "conflict")
    assert http.head(f"/images/{locked['id']}").headers["x-image-meta-status"] == "error"


def test_a_checksum_mismatch_leaves_error_and_nothing_stored(
    cloud: Cloud, http: httpx.Client, data: bytes
) -> None:
    headers = {**upload_headers(data, name="bad"), "X-Image-Meta-Sha256": "0" * 64}
    response = http.post("/images", headers=headers, content=stream(data))
    assert code(response) == (400, "invalid_request")
    assert "sha256" in response.json()["message"]
    [image] = http.get("/images/detail", params={"name": "bad"}).json()["images"]
    assert image["status"] == "error" and store_files(cloud) == []


def _raw_upload(cloud: Cloud, size: int, sent: int, name: str) -> socket.socket:
    """Start a signed, streamed upload by hand and send only ``sent`` of ``size`` bytes."""
    path = "/images"
    signed = {**meta(name=name), "X-Image-Meta-Sha256": "a" * 64}
    headers = signing.sign_headers(
        "POST", path, "", None, *cloud.keys(), unsigned_payload=True, headers=signed.items()
    )
    headers.update(
        {
            **signed,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "Host": f"127.0.0.1:{cloud.port}",
        }
    )
    sock = socket.create_connection(("127.0.0.1", cloud.port))
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(head.encode() + b"\r\n" + os.urandom(sent))
    return sock


def _status_of(http: httpx.Client, name: str) -> str | None:
    found = http.get("/images/detail", params={"name": name})
    return None if found.status_code == 404 else str(found.json()["images"][0]["status"])


def test_a_client_that_disconnects_leaves_error(cloud: Cloud, http: httpx.Client) -> None:
    sock = _raw_upload(cloud, 50 * MiB, 2 * MiB, "cut")
    wait_until(lambda: _status_of(http, "cut") == "uploading", 10, "the upload to start")
    sock.close()
    wait_until(lambda: _status_of(http, "cut") == "error", 10, "the upload to fail")
    assert store_files(cloud) == []  # no partial file either


def test_a_manager_killed_mid_upload_leaves_error(cloud: Cloud, http: httpx.Client) -> None:
    sock = _raw_upload(cloud, 50 * MiB, 12 * MiB, "crash")  # past S3's first 8 MiB part
    wait_until(lambda: _status_of(http, "crash") == "uploading", 10, "the upload to start")
    wait_until(
        lambda: any(f.startswith(".partial-") for f in store_files(cloud)), 10, "a partial file"
    )
    cloud.managers[0].kill(signal.SIGKILL)
    sock.close()
    cloud.start_manager()
    wait_until(lambda: _status_of(http, "crash") == "error", 20, "the upload turned to error")
    assert store_files(cloud) == []


def test_a_resumable_upload_survives_a_broken_connection(cloud: Cloud, http: httpx.Client) -> None:
    data = os.urandom(5 * MiB + 11)
    image = http.post("/images", headers=meta(name="resumed")).json()["image"]
    path = f"/images/{image['id']}/upload"
    started = http.post(path, json={"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    assert started.status_code == 201 and started.json()["upload"]["offset"] == 0
    octet = {"Content-Type": "application/octet-stream"}
    first = http.patch(path, headers={**octet, "Upload-Offset": "0"}, content=data[:MiB])
    assert first.json()["upload"]["offset"] == MiB
    wrong = http.patch(path, headers={**octet, "Upload-Offset": "0"}, content=data[:10])
    assert code(wrong) == (409, "conflict") and wrong.json()["details"]["offset"] == MiB
    # A connection that breaks half-way through a part.
    offset_header = {"Upload-Offset": str(MiB)}
    headers = signing.sign_headers(
        "PATCH", path, "", None, *cloud.keys(), unsigned_payload=True, headers=offset_header.items()
    )
    headers.update(
        {
            **octet,
            **offset_header,
            "Content-Length": str(3 * MiB),
            "Host": f"127.0.0.1:{cloud.port}",
        }
    )
    sock = socket.create_connection(("127.0.0.1", cloud.port))
    head = f"PATCH {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(head.encode() + b"\r\n" + data[MiB : MiB + 2 * MiB + 5])
    time.sleep(0.5)
    sock.close()
    assert http.head(f"/images/{image['id']}").headers["x-image-meta-status"] == "uploading"
    offset = wait_until(
        lambda: (o := http.get(path).json()["upload"]["offset"]) >= MiB and o,
        10,
        "the server's offset",
    )
    assert MiB <= offset <= 3 * MiB + 5
    done = http.patch(path, headers={**octet, "Upload-Offset": str(offset)}, content=data[offset:])
    assert done.status_code == 200, done.text
    assert done.json()["image"]["status"] == "available"
    assert http.get(f"/images/{image['id']}").content == data
    assert not any(f.startswith(".partial") for f in store_files(cloud))


def test_a_resumable_upload_that_does_not_match_ends_in_error(
    cloud: Cloud, http: httpx.Client
) -> None:
    data = os.urandom(MiB)
    image = http.post("/images", headers=meta(name="liar")).json()["image"]
    path = f"/images/{image['id']}/upload"
    http.post(path, json={"size": len(data), "sha256": "0" * 64})
    last = http.patch(
        path,
        headers={"Content-Type": "application/octet-stream", "Upload-Offset": "0"},
        content=data,
    )
    assert code(last) == (400, "invalid_request") and "sha256" in last.json()["message"]
    assert http.head(f"/images/{image['id']}").headers["x-image-meta-status"] == "error"
    assert store_files(cloud) == []
    assert not (cloud.root / "manager" / "uploads" / f"{image['id']}.part").exists()
