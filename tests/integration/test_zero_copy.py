"""Downloads from the file store go out with ``sendfile`` (``api.zerocopy``) on plain HTTP and
are streamed through Python over TLS; both give the same bytes, for whole files and ranges,
to fast and slow readers, and a reader that hangs up mid-file costs the manager nothing."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
from harness import Cloud, free_port, wait_until
from starlette.types import Receive, Scope, Send

from lamina.api.zerocopy import EXTENSION, ZeroCopy
from lamina.identity import signing

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def _upload(cloud: Cloud, data: bytes) -> str:
    with cloud.http as http:
        r = http.post(
            "/images",
            headers={
                "X-Image-Meta-Name": "zc",
                "Content-Type": "application/octet-stream",
                "X-Image-Meta-Sha256": hashlib.sha256(data).hexdigest(),
            },
            content=(data[i : i + MiB] for i in range(0, len(data), MiB)),  # streamed
        )
    assert r.status_code == 201, r.text
    return str(r.json()["image"]["id"])


def _raw_get(cloud: Cloud, image_id: str) -> socket.socket:
    """A signed GET sent on a bare socket; nothing read yet."""
    path = f"/images/{image_id}"
    headers = signing.sign_headers("GET", path, "", b"", *cloud.keys())
    sock = socket.create_connection(("127.0.0.1", cloud.port))
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{cloud.port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _read_response(sock: socket.socket, pause_every: int = 0) -> tuple[bytes, bytes]:
    """Headers and body of one response with Content-Length; optionally sleeping after each
    ``pause_every`` bytes, to be a slow reader the server must wait for."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(
        next(
            v
            for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    chunks, got, mark = [body], len(body), len(body)
    while got < length:
        piece = sock.recv(min(1 * MiB, length - got))
        assert piece, f"connection closed after {got} of {length} bytes"
        chunks.append(piece)
        got += len(piece)
        if pause_every and got - mark >= pause_every:
            time.sleep(0.05)
            mark = got
    return head, b"".join(chunks)


def test_a_slow_reader_gets_every_byte(make_cloud: Callable[..., Cloud]) -> None:
    cloud = make_cloud()
    cloud.start_manager()
    data = os.urandom(24 * MiB + 13)
    image_id = _upload(cloud, data)
    sock = _raw_get(cloud, image_id)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        head, body = _read_response(sock, pause_every=4 * MiB)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()


def test_ranges_and_keep_alive(make_cloud: Callable[..., Cloud]) -> None:
    cloud = make_cloud()
    cloud.start_manager()
    data = os.urandom(5 * MiB)
    image_id = _upload(cloud, data)
    with cloud.http as http:  # one connection, several responses on it
        for start, end in ((0, 0), (MiB - 3, 3 * MiB + 1), (len(data) - 10, len(data) - 1)):
            r = http.get(f"/images/{image_id}", headers={"Range": f"bytes={start}-{end}"})
            assert r.status_code == 206 and r.content == data[start : end + 1]
        assert http.get(f"/images/{image_id}").content == data
        assert http.head(f"/images/{image_id}").headers["x-image-meta-access_count"] == "4"


def test_a_reader_that_hangs_up_mid_file(make_cloud: Callable[..., Cloud]) -> None:
    cloud = make_cloud()
    cloud.start_manager()
    data = os.urandom(32 * MiB)
    image_id = _upload(cloud, data)
    for _ in range(3):
        sock = _raw_get(cloud, image_id)
        sock.recv(256 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset, in the middle of the file
    with cloud.http as http:
        assert http.get(f"/images/{image_id}").content == data
    log = cloud.managers[0].log.read_text()
    assert log.count("lamina.api.zerocopy: download to") == 3, log  # it saw each hang-up
    assert "Bad file descriptor" not in log  # its own descriptor, whatever uvloop closes
    assert "Exception in ASGI application" not in log
    assert "Traceback" not in log


def test_over_tls_downloads_are_streamed(make_cloud: Callable[..., Cloud]) -> None:
    cloud = make_cloud(LAMINA_MANAGER__TLS="ca")
    cloud.start_manager()
    data = os.urandom(6 * MiB + 1)
    image_id = _upload(cloud, data)
    with cloud.http as http:
        assert http.get(f"/images/{image_id}").content == data
        part = http.get(f"/images/{image_id}", headers={"Range": "bytes=100-"})
        assert part.status_code == 206 and part.content == data[100:]
    # sendfile on a TLS socket would have put plaintext on the wire: the client would fail.


@pytest.mark.parametrize("announced", [True, False])
def test_uvicorn_carries_the_extension(tmp_path: Path, announced: bool) -> None:
    """The plumbing against the real uvicorn this project pins: the extension is in the scope
    behind ``ZeroCopy`` (and not without it), and a zerocopysend message gives the bytes."""
    data = os.urandom(3 * MiB + 5)
    (tmp_path / "f").write_bytes(data)
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        seen.append(EXTENSION in scope.get("extensions", {}))
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(data) - 10).encode())],
        }
        await send(start)
        if not seen[-1]:
            await send({"type": "http.response.body", "body": data[10:]})
            return
        with (tmp_path / "f").open("rb") as f:
            await send({"type": EXTENSION, "file": f, "offset": 10, "count": len(data) - 10})

    port = free_port()
    config = uvicorn.Config(
        ZeroCopy(app) if announced else app,
        port=port,
        http="httptools",
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "uvicorn to start")
        got = httpx.get(f"http://127.0.0.1:{port}/")
        assert got.content == data[10:]
        assert seen == [announced]
    finally:
        server.should_exit = True
        thread.join(10)
