"""Images and users: private images are invisible to others, public ones read-only, grants
share them; and images registered by an http location (VISOR's Listing 4.3)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from harness import Cloud, slow_mirror

from lamina.identity.signing import LaminaAuth

pytestmark = pytest.mark.integration


def meta(**attrs: str) -> dict[str, str]:
    return {f"X-Image-Meta-{k}": v for k, v in attrs.items()}


def member(cloud: Cloud, name: str) -> httpx.Client:
    secret = cloud.client().add_user(name, f"{name}@example.com")["key"]["secret"]
    return httpx.Client(base_url=cloud.url, auth=LaminaAuth(name, secret), timeout=60)


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


def test_private_public_and_shared_images(cloud: Cloud) -> None:
    alice, bob = member(cloud, "alice"), member(cloud, "bob")
    private = alice.post("/images", headers=meta(name="mine", access="private")).json()["image"]
    public = alice.post("/images", headers=meta(name="ours", access="public")).json()["image"]
    assert [i["name"] for i in bob.get("/images").json()["images"]] == ["ours"]
    assert code(bob.get(f"/images/{private['id']}")) == (404, "not_found")
    assert bob.head(f"/images/{private['id']}").status_code == 404
    assert code(bob.delete(f"/images/{public['id']}")) == (403, "forbidden")
    assert code(bob.put(f"/images/{public['id']}", headers=meta(name="x"))) == (403, "forbidden")
    assert bob.head(f"/images/{public['id']}").status_code == 200
    assert {i["name"] for i in cloud.http.get("/images").json()["images"]} == {"mine", "ours"}
    assert alice.delete(f"/images/{public['id']}").status_code == 200


@pytest.fixture
def location() -> Iterator[tuple[str, bytes]]:
    body = os.urandom(2 * 1024 * 1024 + 3)
    with slow_mirror(body, 50 * 1024 * 1024) as url:
        yield url, body


def test_an_image_registered_by_location_streams_through(
    cloud: Cloud, location: tuple[str, bytes]
) -> None:
    url, body = location
    http = cloud.http
    made = http.post(
        "/images", headers=meta(name="Fedora", format="iso", store="http", location=url)
    )
    assert made.status_code == 201, made.text
    image = made.json()["image"]
    assert image["status"] == "available" and image["size"] == len(body)
    assert image["store"] == "http" and image["location"] == url
    got = http.get(f"/images/{image['id']}")
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(body).hexdigest()
    part = http.get(f"/images/{image['id']}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == body[100:200]
    # Deleting the image does not touch a file that is not Lamina's.
    assert http.delete(f"/images/{image['id']}").status_code == 200
    assert httpx.get(url).content == body


@pytest.fixture
def empty_server(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server with nothing to serve: every path is a 404."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_location_with_no_file_is_400(cloud: Cloud, empty_server: str) -> None:
    response = cloud.http.post(
        "/images", headers=meta(name="x", store="http", location=f"{empty_server}/no.iso")
    )
    assert code(response) == (400, "location_unavailable")
    assert response.json()["message"] == "the location could not be fetched"
    both = cloud.http.post(
        "/images", headers=meta(name="x", store="file", location=f"{empty_server}/no.iso")
    )
    assert code(both) == (400, "invalid_request")  # a writable store takes files, not locations
    assert cloud.http.get("/images/detail").status_code == 404  # nothing was registered


def test_statistics_count_what_the_caller_may_see(cloud: Cloud) -> None:
    http = cloud.http
    for name, fmt, access in (
        ("a", "iso", "public"),
        ("b", "qcow2", "public"),
        ("c", "iso", "private"),
    ):
        http.post(
            "/images", headers=meta(name=name, format=fmt, access=access, architecture="x86_64")
        )
    stats = http.get("/images/stats").json()["stats"]
    assert stats["images"] == 3 and stats["never_used"] == 3
    assert stats["by_format"] == {"iso": 2, "qcow2": 1}
    assert stats["by_status"] == {"locked": 3} and stats["by_store"] == {"file": 3}
    bob = member(cloud, "bob")
    assert bob.get("/images/stats").json()["stats"]["images"] == 2  # not the private one


def test_a_manager_can_serve_with_several_processes(make_cloud) -> None:  # type: ignore[no-untyped-def]
    cloud = make_cloud(LAMINA_MANAGER__PROCESSES="2")
    proc = cloud.start_manager()
    assert proc.proc is not None
    children = Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children").read_text().split()
    assert len(children) >= 2  # uvicorn's workers (and its process manager's helper)
    http = cloud.http
    made = [
        http.post("/images", headers=meta(name=f"p{i}")).json()["image"]["id"] for i in range(20)
    ]
    listed = [i["id"] for i in http.get("/images", params={"sort": "name"}).json()["images"]]
    assert sorted(listed) == sorted(made)


def test_a_member_cannot_make_the_manager_fetch_private_addresses(
    make_cloud: Callable[..., Cloud], location: tuple[str, bytes]
) -> None:
    """The reproduction of issue 12, item 4: with the default settings a member registered
    a loopback URL (the sample channel's server) as an image location and read it back, and
    the errors told which local ports were open. Now every such location is one answer."""
    cloud = make_cloud()
    del cloud.base_env["LAMINA_IMAGES__HTTP_ALLOW_PRIVATE"]  # the default
    cloud.start_manager()
    bob = member(cloud, "bob")
    url, _ = location
    port = int(url.split(":")[2].split("/")[0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    answers = set()
    for where in (
        url,
        url.replace("127.0.0.1", "localhost"),
        url.replace("127.0.0.1", "2130706433"),
        url.replace("127.0.0.1", "[::ffff:127.0.0.1]"),
        f"http://127.0.0.1:{port}/missing.iso",
        f"http://127.0.0.1:{closed}/x.iso",
        f"http://127.0.0.1:{cloud.port}/health",
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://[fd00:ec2::254]/latest/",
    ):
        response = bob.post("/images", headers=meta(name="x", store="http", location=where))
        assert code(response) == (400, "location_unavailable"), (where, response.text)
        answers.add(response.text)
    assert len(answers) == 1
    assert bob.get("/images").status_code == 404  # nothing was registered (VISOR: 404)
