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

from lamina.errors import Ambiguous
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


def test_an_image_is_private_unless_its_owner_says_otherwise(cloud: Cloud) -> None:
    alice, bob = member(cloud, "alice"), member(cloud, "bob")
    made = alice.post("/images", headers=meta(name="nx-eval")).json()["image"]
    assert made["access"] == "private"
    assert bob.get("/images").status_code == 404  # none he may see
    assert code(bob.get(f"/images/{made['id']}")) == (404, "not_found")
    assert code(bob.get("/images/nx-eval/history")) == (404, "not_found")
    shared = alice.post("/images", headers=meta(name="ours", access="public")).json()["image"]
    assert shared["access"] == "public"
    assert [i["name"] for i in bob.get("/images").json()["images"]] == ["ours"]


def test_every_image_route_takes_a_name(cloud: Cloud) -> None:
    alice, bob = member(cloud, "alice"), member(cloud, "bob")
    data = os.urandom(4096)
    digest = hashlib.sha256(data).hexdigest()
    made = alice.post("/images", headers=meta(name="nx-eval", format="raw")).json()["image"]
    # The resumable upload, by name: start, state, a part, cancel; then again to the end.
    started = alice.post("/images/nx-eval/upload", json={"size": len(data), "sha256": digest})
    assert started.status_code == 201, started.text
    assert alice.get("/images/nx-eval/upload").json()["upload"]["offset"] == 0
    octet = {"Content-Type": "application/octet-stream"}
    part = alice.patch(
        "/images/nx-eval/upload", headers={**octet, "Upload-Offset": "0"}, content=data[:100]
    )
    assert part.json()["upload"]["offset"] == 100
    assert alice.delete("/images/nx-eval/upload").json() == {"upload": None}
    assert (
        alice.post("/images/nx-eval/upload", json={"size": len(data), "sha256": digest}).status_code
        == 201
    )
    done = alice.patch(
        "/images/nx-eval/upload", headers={**octet, "Upload-Offset": "0"}, content=data
    )
    assert done.json()["image"]["status"] == "available", done.text
    # HEAD, GET (the file), PUT, history, DELETE.
    head = alice.head("/images/nx-eval")
    assert head.status_code == 200 and head.headers["x-image-meta-id"] == made["id"]
    assert alice.get("/images/nx-eval").content == data
    changed = alice.put("/images/nx-eval", headers=meta(os="linux")).json()["image"]
    assert changed["id"] == made["id"] and changed["os"] == "linux"
    actions = [e["action"] for e in alice.get("/images/nx-eval/history").json()["history"]]
    assert actions[0] == "register" and actions[-1] == "update"
    # Another user does not see a private image by its name either.
    assert bob.head("/images/nx-eval").status_code == 404
    assert code(bob.delete("/images/nx-eval")) == (404, "not_found")
    assert alice.delete("/images/nx-eval").json()["image"]["id"] == made["id"]
    assert code(alice.get("/images/nx-eval/history")) == (404, "not_found")


def test_a_name_several_images_carry(cloud: Cloud) -> None:
    alice = member(cloud, "alice")
    secret = cloud.client().add_user("bob", "bob@example.com")["key"]["secret"]
    bob = httpx.Client(base_url=cloud.url, auth=LaminaAuth("bob", secret), timeout=60)
    theirs = alice.post("/images", headers=meta(name="base", access="public")).json()["image"]
    admins = cloud.http.post("/images", headers=meta(name="base", access="public")).json()["image"]
    # Each owner's own comes first.
    assert alice.get("/images/base/history").status_code == 200
    assert alice.head("/images/base").headers["x-image-meta-id"] == theirs["id"]
    assert cloud.http.head("/images/base").headers["x-image-meta-id"] == admins["id"]
    # Bob owns neither: ambiguous, listing both; HEAD has only its status to say so.
    ambiguous = bob.get("/images/base/history")
    assert code(ambiguous) == (400, "ambiguous_name")
    candidates = {c["id"] for c in ambiguous.json()["details"]["candidates"]}
    assert candidates == {theirs["id"], admins["id"]}
    assert bob.head("/images/base").status_code == 400
    # Ids keep VISOR's answers: readable by him, not his to change.
    assert code(bob.delete(f"/images/{theirs['id']}")) == (403, "forbidden")
    assert code(bob.delete("/images/base")) == (400, "ambiguous_name")
    # The client names the candidates of a HEAD too.
    with cloud.client("bob", secret) as client:
        with pytest.raises(Ambiguous) as caught:
            client.head_image("base")
        assert {c["id"] for c in caught.value.details["candidates"]} == candidates
