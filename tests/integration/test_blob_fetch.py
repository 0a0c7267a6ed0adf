"""Hosts fetch the image repository's files through the manager's ``/blobs`` route, with the
capability the manager gives them (``lamina.compute.fetch``): the route's refusals and
answers on a real manager; an agent's cache downloading through a proxy that cuts the
transfer half-way, resuming with ``Range`` and checking the digest; a corrupted transfer
leaving nothing; an HTTPS manager checked against Lamina's CA by a real agent."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clouds import add_host
from harness import Cloud, free_port

from lamina.agent.cache import DownloadTracker, FetchConfig, ImageCache
from lamina.compute.fetch import mint
from lamina.errors import BackendUnavailable, Conflict
from lamina.identity.secretbox import SecretBox

pytestmark = pytest.mark.integration
SIZE = 8 * 1024 * 1024


@pytest.fixture
def blob(cloud: Cloud, tmp_path: Path) -> tuple[bytes, str, str]:
    """An image of random bytes in the cloud's file store: its bytes, digest and h1's id."""
    data = os.urandom(SIZE)
    path = tmp_path / "blob.img"
    path.write_bytes(data)
    cloud.boot_image(path, "blob")
    with cloud.client() as client:
        host_id = client.host("h1")["id"]
    return data, hashlib.sha256(data).hexdigest(), host_id


def _box(cloud: Cloud) -> SecretBox:
    return SecretBox(cloud.root / "manager")


def _code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


def test_the_blob_route_answers_hosts_with_a_capability_only(
    cloud: Cloud, blob: tuple[bytes, str, str]
) -> None:
    data, digest, host_id = blob
    box = _box(cloud)
    good = mint(box, host_id, digest)
    path = f"/blobs/{digest}"
    raw = httpx.Client(base_url=cloud.url, timeout=60)

    # No capability; an administrator's signed request (users' keys are not for blobs).
    assert _code(raw.get(path)) == (403, "auth_missing")
    assert _code(cloud.http.get(path)) == (403, "auth_missing")
    # Forged, expired, for another digest, for a host that does not exist.
    version, host, expires, mac = good.split(".")
    forged = f"{version}.{host}.{expires}.{'0' * 64}"
    other = "0" * 64
    for capability in (
        forged,
        mint(box, host_id, digest, seconds=-5),
        mint(box, host_id, other),
        mint(box, "no-such-host", digest),
        "not a capability",
    ):
        answer = raw.get(path, headers={"Authorization": f"Bearer {capability}"})
        assert _code(answer) == (403, "auth_bad_token"), capability
        assert answer.headers.get("content-type", "").startswith("application/json")
    # A good capability for a digest no image has: 404; for a malformed digest: 400.
    missing = raw.get(
        f"/blobs/{other}", headers={"Authorization": f"Bearer {mint(box, host_id, other)}"}
    )
    assert _code(missing) == (404, "not_found")
    bad = raw.get("/blobs/XYZ", headers={"Authorization": f"Bearer {mint(box, host_id, 'XYZ')}"})
    assert _code(bad) == (400, "invalid_request")

    auth = {"Authorization": f"Bearer {good}"}
    head = raw.head(path, headers=auth)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(SIZE)
    assert head.headers["etag"] == f'"{digest}"'
    assert head.headers["accept-ranges"] == "bytes"
    whole = raw.get(path, headers=auth)
    assert whole.status_code == 200 and whole.content == data
    part = raw.get(path, headers={**auth, "Range": f"bytes={SIZE - 1000}-"})
    assert part.status_code == 206 and part.content == data[-1000:]
    assert part.headers["content-range"] == f"bytes {SIZE - 1000}-{SIZE - 1}/{SIZE}"
    assert _code(raw.get(path, headers={**auth, "Range": f"bytes={SIZE}-"})) == (
        416, "range_not_satisfiable",
    )  # fmt: skip


class Proxy:
    """A TCP proxy in front of the manager that cuts the first response after ``cut_after``
    bytes (a transfer killed half-way) or flips one byte at ``flip_at`` of every response;
    it records each request's head."""

    def __init__(self, port: int, *, cut_after: int | None = None, flip_at: int | None = None):
        self.target = port
        self.cut_after, self.flip_at = cut_after, flip_at
        self.requests: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        first = not self.requests
        head = b""
        while b"\r\n\r\n" not in head:
            got = client.recv(65536)
            if not got:
                client.close()
                return
            head += got
        self.requests.append(head.decode("latin-1"))
        upstream = socket.create_connection(("127.0.0.1", self.target))
        upstream.sendall(head)
        sent = 0
        with client, upstream:
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    return
                if self.flip_at is not None and sent <= self.flip_at < sent + len(chunk):
                    i = self.flip_at - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                if first and self.cut_after is not None and sent + len(chunk) >= self.cut_after:
                    client.sendall(chunk[: self.cut_after - sent])
                    client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    return  # closed with a reset: the transfer is killed
                client.sendall(chunk)
                sent += len(chunk)

    def close(self) -> None:
        self.listener.close()


class Tracker(DownloadTracker):
    """The real tracker, noting each transfer's total and bytes done when it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[tuple[str, int | None, int]] = []

    def end(self, transfer: Any) -> None:
        self.ended.append((transfer.source, transfer.total, transfer.done))
        super().end(transfer)


@pytest.fixture
def proxied(
    cloud: Cloud, tmp_path: Path
) -> Iterator[Callable[..., tuple[ImageCache, Proxy, Tracker]]]:
    made: list[Proxy] = []

    def make(**cuts: int) -> tuple[ImageCache, Proxy, Tracker]:
        proxy = Proxy(cloud.port, **cuts)
        made.append(proxy)
        tracker = Tracker()
        cache = ImageCache(
            tmp_path / f"cache{len(made)}", tracker, FetchConfig(manager_url=proxy.url)
        )
        return cache, proxy, tracker

    yield make
    for proxy in made:
        proxy.close()


def test_a_transfer_killed_half_way_resumes_with_range_and_is_verified(
    cloud: Cloud, blob: tuple[bytes, str, str], proxied: Callable[..., Any]
) -> None:
    data, digest, host_id = blob
    cache, proxy, tracker = proxied(cut_after=SIZE // 2)
    entry = cache.install(f"blob:{digest}", digest, mint(_box(cloud), host_id, digest))
    assert entry.sha256 == digest and Path(entry.path).read_bytes() == data
    first, second = proxy.requests
    assert "range:" not in first.lower()
    resumed_at = int(second.lower().split("range: bytes=")[1].split("-")[0])
    # Up to the cut (a reset drops what was still in flight), but not from the start.
    assert 0 < resumed_at <= SIZE // 2, second
    # The progress reporting saw both tries, each out of the whole size: the first
    # stopped where the second resumed, which counted the bytes it had.
    source = f"blob:{digest}"
    assert tracker.ended == [(source, SIZE, resumed_at), (source, SIZE, SIZE)]
    assert not cache.partial_path(digest).exists()
    # Cached now: asked again, nothing goes over the wire.
    cache.install(f"blob:{digest}", digest, mint(_box(cloud), host_id, digest))
    assert len(proxy.requests) == 2


def test_a_download_given_up_resumes_in_the_next_call(
    cloud: Cloud,
    blob: tuple[bytes, str, str],
    proxied: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The step that asked gives up (one try here); the partial file, named by the digest,
    stays, and the next request (a new step attempt, a new capability) continues it."""
    import lamina.agent.cache

    data, digest, host_id = blob
    monkeypatch.setattr(lamina.agent.cache, "BLOB_ATTEMPTS", 1)
    cache, proxy, _ = proxied(cut_after=SIZE // 2)
    with pytest.raises(BackendUnavailable):
        cache.install(f"blob:{digest}", digest, mint(_box(cloud), host_id, digest))
    kept = cache.partial_path(digest).stat().st_size
    assert 0 < kept < SIZE and not (cache.root / digest).exists()
    entry = cache.install(f"blob:{digest}", digest, mint(_box(cloud), host_id, digest))
    assert Path(entry.path).read_bytes() == data
    assert f"range: bytes={kept}-" in proxy.requests[1].lower()


def test_a_blob_whose_bytes_do_not_match_its_digest_leaves_nothing(
    cloud: Cloud, blob: tuple[bytes, str, str], proxied: Callable[..., Any]
) -> None:
    _, digest, host_id = blob
    cache, _, _ = proxied(flip_at=SIZE // 3)
    with pytest.raises(Conflict, match="nothing cached"):
        cache.install(f"blob:{digest}", digest, mint(_box(cloud), host_id, digest))
    assert [p.name for p in cache.root.iterdir() if not p.name.startswith("sources")] == []


def test_an_https_manager_is_checked_against_laminas_ca(
    make_cloud: Callable[..., Cloud], tmp_path: Path
) -> None:
    """A real agent enrolled with an HTTPS manager fetches an image's file from it, checking
    its certificate against the CA it pinned at enrolment."""
    cloud = make_cloud(LAMINA_MANAGER__TLS="ca")
    cloud.start_manager()
    add_host(cloud, "h1")
    assert (cloud.root / "agent-h1" / "manager.url").read_text().strip() == cloud.url
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(100_000))
    image = cloud.boot_image(kernel)
    with cloud.client() as client:
        made = client.create_instance(name="k", kernel=image, memory_mib=64)
        job = client.wait_job(made["job"]["id"], timeout=60)
        assert job["status"] == "succeeded", job
    digest = hashlib.sha256(kernel.read_bytes()).hexdigest()
    assert (cloud.root / "agent-h1" / "cache" / digest).read_bytes() == kernel.read_bytes()
    assert "https://" in cloud.url
