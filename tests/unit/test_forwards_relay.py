"""Port forwards and the configuration-service relay on the host's own network, over
loopback only (the namespace versions run in tests/integration/test_agent_network.py)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamina.agent.forwards import ForwardTable
from lamina.agent.relay import Relay
from lamina.errors import Conflict, InvalidRequest, NotFound
from lamina.wire.protocol import NetworkSpec, PortForward

NET = "net-0123456789abcdef"
LOOPBACK = NetworkSpec(
    network=NET, name="lo", cidr="127.0.0.0/8", address="127.0.0.1", domain="lo.lamina.internal"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that echoes what it gets and, at its end, says "bye"
    (so a forward must pass a half-close on and still carry the answer back)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.sendall(b"bye")

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield int(server.getsockname()[1])
    server.shutdown(socket.SHUT_RDWR)
    server.close()


def cut(port: int) -> bool:
    """Whether a connection to the forward is closed at once (the guest refused it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            return conn.recv(100) == b""
        except ConnectionResetError:
            return True


def talk(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
        return out


@pytest.fixture
def table(tmp_path: Path) -> Iterator[ForwardTable]:
    t = ForwardTable(tmp_path / "forwards.json", "", lambda: {NET: LOOPBACK})
    yield t
    t.close()


def test_forward_copies_both_ways_with_half_close(table: ForwardTable, echo: int) -> None:
    spec = PortForward(network=NET, guest_ip="127.0.0.1", guest_port=echo)
    info = table.put("fwd-00000001", spec)
    assert info.host_port > 0 and info.forward == "fwd-00000001"
    assert info.model_dump(exclude={"forward", "host_port", "floating"}) == spec.model_dump(
        exclude={"host_port"}
    )
    big = bytes(range(256)) * 4096  # 1 MiB: several reads each way
    assert talk(info.host_port, big) == big + b"bye"
    # Many at once.
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(talk(info.host_port, b"%d" % i)))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(b"%dbye" % i for i in range(8))
    # The same request again is a no-op: same port, same listener.
    assert table.put("fwd-00000001", spec) == info
    assert table.list() == [info]
    assert table.get("fwd-00000001") == info


def test_forward_conflicts(table: ForwardTable, echo: int) -> None:
    first = table.put(
        "fwd-00000001", PortForward(network=NET, guest_ip="127.0.0.1", guest_port=echo)
    )
    with pytest.raises(Conflict, match="fwd-00000001"):
        table.put(
            "fwd-00000002",
            PortForward(
                network=NET, guest_ip="127.0.0.1", guest_port=echo, host_port=first.host_port
            ),
        )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Conflict, match=f"127.0.0.1:{port}"):
            table.put(
                "fwd-00000003",
                PortForward(network=NET, guest_ip="127.0.0.1", guest_port=echo, host_port=port),
            )
    assert [f.forward for f in table.list()] == ["fwd-00000001"]
    for forward, spec in [
        ("nope", PortForward(network=NET, guest_ip="127.0.0.1", guest_port=echo)),
        (
            "fwd-00000004",
            PortForward(network="net-ffffffffffffffff", guest_ip="127.0.0.1", guest_port=1),
        ),
        ("fwd-00000004", PortForward(network=NET, guest_ip="10.0.0.1", guest_port=1)),
        ("fwd-00000004", PortForward(network=NET, guest_ip="127.0.0.1", guest_port=1, bind="x")),
    ]:
        with pytest.raises(InvalidRequest):
            table.put(forward, spec)


def test_forward_replace_delete_and_restore(tmp_path: Path, table: ForwardTable, echo: int) -> None:
    port = free_port()
    table.put(
        "fwd-00000001",
        PortForward(network=NET, guest_ip="127.0.0.1", guest_port=echo, host_port=port),
    )
    assert talk(port, b"x") == b"xbye"
    # Same id, another guest port: replaced (nothing listens at the new one: cut at once).
    dead = free_port()
    replaced = table.put(
        "fwd-00000001",
        PortForward(network=NET, guest_ip="127.0.0.1", guest_port=dead, host_port=port),
    )
    assert replaced.guest_port == dead and cut(port)
    picked = table.put(
        "fwd-00000002", PortForward(network=NET, guest_ip="127.0.0.1", guest_port=echo)
    )
    stored = json.loads((tmp_path / "forwards.json").read_text())
    assert sorted(stored["forwards"]) == ["fwd-00000001", "fwd-00000002"]
    table.close()
    with pytest.raises(OSError):
        talk(picked.host_port, b"x")
    # A restarted agent listens again, on the ports the forwards had (a picked one too).
    again = ForwardTable(tmp_path / "forwards.json", "", lambda: {NET: LOOPBACK})
    again.restore()
    try:
        assert again.list() == [replaced, picked]
        assert talk(picked.host_port, b"y") == b"ybye"
        again.delete("fwd-00000002")
        again.delete("fwd-00000002")  # idempotent
        with pytest.raises(NotFound):
            again.get("fwd-00000002")
        with pytest.raises(OSError):
            talk(picked.host_port, b"x")
        assert [f.forward for f in again.list()] == ["fwd-00000001"]
    finally:
        again.close()


def test_a_forward_that_cannot_listen_again_is_kept(
    tmp_path: Path, table: ForwardTable, echo: int
) -> None:
    info = table.put(
        "fwd-00000001", PortForward(network=NET, guest_ip="127.0.0.1", guest_port=echo)
    )
    table.close()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", info.host_port))
        taken.listen()
        again = ForwardTable(tmp_path / "forwards.json", "", lambda: {NET: LOOPBACK})
        again.restore()
        assert again.list() == []
    again.put("fwd-00000002", PortForward(network=NET, guest_ip="127.0.0.1", guest_port=echo))
    stored = json.loads((tmp_path / "forwards.json").read_text())
    assert sorted(stored["forwards"]) == ["fwd-00000001", "fwd-00000002"]
    again.close()


# -- the relay ---------------------------------------------------------------------------


@pytest.fixture
def manager() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for the manager's configuration service on 127.0.0.1: it records each
    request and answers 201 with JSON (403 for /guest/forbidden)."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": self.rfile.read(length),
                }
            )
            body = b'{"ok": true}'
            self.send_response(403 if self.path.endswith("/guest/forbidden") else 201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = _any  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/base/", seen
    server.shutdown()
    server.server_close()


def test_relay(manager: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = manager
    port = free_port()
    relay = Relay(NET, "127.0.0.1", url, "", port=port)
    relay.start()
    try:
        assert relay.listening == f"127.0.0.1:{port}"
        base = f"http://127.0.0.1:{port}"
        response = httpx.get(
            f"{base}/guest/v1/instances/i-1?x=1",
            headers={
                "Authorization": "Bearer secret",
                "X-Lamina-Guest-Address": "10.0.0.99",
                "X-Lamina-Network": "net-ffffffffffffffff",
                "X-Other": "dropped",
                "Accept": "application/json",
            },
        )
        assert (response.status_code, response.json()) == (201, {"ok": True})
        assert response.headers["content-type"] == "application/json"
        request = seen[-1]
        assert (request["method"], request["path"]) == ("GET", "/base/guest/v1/instances/i-1?x=1")
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["authorization"] == "Bearer secret"
        assert headers["x-lamina-guest-address"] == "127.0.0.1"
        assert headers["x-lamina-network"] == NET
        assert headers["accept"] == "application/json"
        assert "x-other" not in headers

        response = httpx.post(
            f"{base}/guest/RPC2", content=b"<methodCall/>", headers={"Content-Type": "text/xml"}
        )
        assert response.status_code == 201
        assert (
            seen[-1]["body"] == b"<methodCall/>"
            and seen[-1]["headers"]["Content-Type"] == "text/xml"
        )
        assert httpx.put(f"{base}/guest/forbidden", content=b"x").status_code == 403
        assert httpx.get(f"{base}/other").status_code == 404
        assert httpx.get(f"{base}/guestx").status_code == 404
        assert httpx.delete(f"{base}/guest/x").status_code == 405
        count = len(seen)
        # A body over 1 MiB is refused before it is read.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST /guest/x HTTP/1.1\r\nHost: l\r\nContent-Length: 1048577\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.0 413")
        assert len(seen) == count
    finally:
        relay.close()


def test_relay_answers_502_when_the_manager_cannot_be_reached() -> None:
    port = free_port()
    relay = Relay(NET, "127.0.0.1", f"http://127.0.0.1:{free_port()}", "", port=port)
    relay.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/guest/v1/x")
        assert response.status_code == 502
        assert "cannot be reached" in response.text
    finally:
        relay.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/guest/v1/x")
