"""The configuration-service relay: ``http://lamina.local/guest/...`` for a network's guests.

One small HTTP server per network, on the host's service address, port 80, inside the
agent's namespace (its socket is made there). It relays ``GET``, ``PUT`` and ``POST``
requests whose path starts with ``/guest/`` to the manager (``config_service_url`` + the
path), adding who asks: ``X-Lamina-Guest-Address`` (the peer's address, as the bridge
delivered it) and ``X-Lamina-Network`` (headers of those names the guest sent are dropped).
Only ``Authorization``, ``Content-Type`` and ``Accept`` of the guest's headers pass. The
manager's certificate is checked against the agent's CA file (``tls/ca.pem``) and the
system's store; the agent's own certificate is presented, so the manager can tell a relay
from anyone else.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from lamina.agent.netns import socket_in

log = logging.getLogger(__name__)

PORT = 80
MAX_BODY = 1024 * 1024
UPSTREAM_TIMEOUT = 30.0
#: Seconds a guest may take to send its request.
CLIENT_TIMEOUT = 30.0
PASSED_HEADERS = ("Authorization", "Content-Type", "Accept")
GUEST_ADDRESS = "X-Lamina-Guest-Address"
NETWORK = "X-Lamina-Network"


def upstream_tls(tls_dir: Path) -> ssl.SSLContext:
    """The system's trust store plus the agent's CA file, with the agent's certificate as
    the client certificate (each when present)."""
    context = ssl.create_default_context()
    ca = tls_dir / "ca.pem"
    if ca.is_file():
        context.load_verify_locations(cafile=str(ca))
    cert, key = tls_dir / "agent.pem", tls_dir / "agent.key"
    if cert.is_file() and key.is_file():
        context.load_cert_chain(str(cert), str(key))
    return context


def upstream_url(base: str, path: str) -> str:
    """The manager's URL of a guest's request path (which keeps its query)."""
    return base.rstrip("/") + path


class Relay:
    """The relay of one network; ``start()`` listens, ``close()`` stops."""

    def __init__(
        self,
        network: str,
        address: str,
        upstream: str,
        namespace: str,
        tls: ssl.SSLContext | bool = True,
        port: int = PORT,
    ) -> None:
        self.network = network
        self.address = address
        self.upstream = upstream
        self.namespace = namespace
        self.port = port
        self._client = httpx.Client(verify=tls, timeout=UPSTREAM_TIMEOUT, follow_redirects=False)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> str:
        return f"{self.address}:{self.port}"

    def matches(self, address: str, upstream: str) -> bool:
        return self._server is not None and (self.address, self.upstream) == (address, upstream)

    def start(self) -> None:
        """Listen on ``address:port`` inside the namespace. Raises ``OSError`` when the
        address cannot be bound (not on the bridge yet, or the port is taken)."""
        sock = socket_in(self.namespace)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, self.port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        server = ThreadingHTTPServer((self.address, self.port), _handler(self), False)
        server.socket.close()
        server.socket = sock
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"relay-{self.network}", daemon=True
        )
        self._thread.start()
        log.info("configuration-service relay of %s on %s", self.network, self.listening)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._client.close()

    def relay(
        self, method: str, path: str, peer: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        """(status, content type, body) of the manager's answer to a guest's request."""
        sent = {name: headers[name] for name in PASSED_HEADERS if name in headers}
        sent[GUEST_ADDRESS] = peer
        sent[NETWORK] = self.network
        try:
            response = self._client.request(
                method, upstream_url(self.upstream, path), headers=sent, content=body
            )
        except httpx.HTTPError as exc:
            log.warning("relay of %s: the manager cannot be reached: %s", self.network, exc)
            return 502, "text/plain", b"the configuration service cannot be reached\n"
        content_type = response.headers.get("content-type", "application/octet-stream")
        return response.status_code, content_type, response.content


def _handler(relay: Relay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = CLIENT_TIMEOUT
        server_version = "lamina-relay"
        sys_version = ""

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _relay(self) -> None:
            if not self.path.startswith("/guest/"):
                self._answer(404, "text/plain", b"not found\n")
                return
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self._answer(411, "text/plain", b"a request body needs a Content-Length\n")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._answer(400, "text/plain", b"bad Content-Length\n")
                return
            if length < 0:
                self._answer(400, "text/plain", b"bad Content-Length\n")
                return
            if length > MAX_BODY:
                self._answer(413, "text/plain", b"request body over 1 MiB\n")
                return
            body = self.rfile.read(length) if length else b""
            headers = {name: value for name in PASSED_HEADERS if (value := self.headers.get(name))}
            status, content_type, answer = relay.relay(
                self.command, self.path, self.client_address[0], headers, body
            )
            self._answer(status, content_type, answer)

        do_GET = do_PUT = do_POST = _relay  # noqa: N815 - http.server's naming

        def _refuse(self) -> None:
            self._answer(405, "text/plain", b"method not allowed\n")

        do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("relay %s: " + format, relay.network, *args)

    return Handler


def close_all(relays: dict[str, Relay]) -> None:
    for relay in relays.values():
        with contextlib.suppress(Exception):
            relay.close()
    relays.clear()
