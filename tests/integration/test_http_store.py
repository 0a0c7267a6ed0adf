"""The http store against a real HTTP server on 127.0.0.1 (a threaded ``http.server``).

Paths: ``/f/<flags>/<name>`` serves the generated file ``name``; ``flags`` is ``-`` or a
comma-separated list of ``md5`` (Content-MD5), ``etag`` (the MD5 as a strong ETag),
``weaketag``, ``mpetag`` (an S3 multipart ETag), ``apache`` (an inode-size-mtime ETag),
``nohead`` (405 to HEAD), ``norange`` (ignores Range), ``nosize`` (no length at all).
``/r/<n>/<rest>`` redirects ``n`` times before ``/<rest>``; ``/loop/a`` and ``/loop/b``
redirect to each other; ``/to?url=<url>`` redirects to ``url``; ``/status/<code>`` answers
``code``.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import logging
import random
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from lamina import fetchpolicy
from lamina.errors import InvalidRequest, LocationUnavailable, NotFound
from lamina.stores.base import CHUNK
from lamina.stores.http import HttpImageStore

pytestmark = pytest.mark.integration

FILES = {
    "small.img": random.Random(1).randbytes(10_000),
    "big.img": random.Random(2).randbytes(3 * CHUNK + 12_345),
    "empty.img": b"",
}


class Handler(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str, str | None]] = []
    hosts: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(self, head: bool) -> None:
        self.requests.append((self.command, self.path, self.headers.get("Range")))
        self.hosts.append(self.headers.get("Host", ""))
        parsed = urllib.parse.urlsplit(self.path)
        parts = parsed.path.strip("/").split("/")
        if parts[0] == "r":
            n, rest = int(parts[1]), "/".join(parts[2:])
            query = f"?{parsed.query}" if parsed.query else ""
            return self._redirect((f"/r/{n - 1}/{rest}" if n > 1 else f"/{rest}") + query)
        if parts[0] == "loop":
            return self._redirect("/loop/b" if parts[1] == "a" else "/loop/a")
        if parts[0] == "to":
            return self._redirect(urllib.parse.parse_qs(parsed.query)["url"][0])
        if parts[0] == "status":
            return self._status(int(parts[1]))
        if parts[0] != "f" or len(parts) != 3 or parts[2] not in FILES:
            return self._status(404)
        flags, data = set(parts[1].split(",")), FILES[parts[2]]
        if head and "nohead" in flags:
            return self._status(405)
        md5 = hashlib.md5(data).digest()
        start, end, status = 0, len(data), 200
        wanted = self.headers.get("Range")
        if wanted and "norange" not in flags:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
            assert m, wanted
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
            status = 206
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if "nosize" not in flags:
            self.send_header("Content-Length", str(end - start))
        if "md5" in flags and status == 200:
            self.send_header("Content-MD5", base64.b64encode(md5).decode())
        etags = {
            "etag": f'"{md5.hex()}"',
            "weaketag": f'W/"{md5.hex()}"',
            "mpetag": f'"{md5.hex()}-3"',
            "apache": '"2f5802-25c00000-9544b400"',
        }
        for flag, etag in etags.items():
            if flag in flags:
                self.send_header("ETag", etag)
        self.end_headers()
        if not head:
            view = memoryview(data)[start:end]
            for i in range(0, len(view), 65536):
                self.wfile.write(view[i : i + 65536])


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stops reading (a range the server ignored, an abandoned stream)
        # breaks the pipe; that is expected here.
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def store() -> Iterator[HttpImageStore]:
    # The server is on loopback, which the default policy refuses.
    s = HttpImageStore(max_redirects=5, timeout=10.0, allow_private=True)
    Handler.requests.clear()
    yield s
    s.close()


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="lamina")
    return caplog


UNAVAILABLE = "^the location could not be fetched$"


def unavailable(log: pytest.LogCaptureFixture, reason: str) -> None:
    """The one answer was given, and the log says why."""
    assert re.search(reason, log.text), log.text
    log.clear()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def read(store: HttpImageStore, location: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join(store.open(location, offset, length))


# -- probe -----------------------------------------------------------------------------------


def test_probe_reads_size_and_no_checksum(server: str, store: HttpImageStore) -> None:
    found = store.probe(f"{server}/f/-/small.img")
    assert found.location == f"{server}/f/-/small.img"
    assert found.size == len(FILES["small.img"])
    assert found.checksum is None
    assert [r[0] for r in Handler.requests] == ["HEAD"]


@pytest.mark.parametrize("flags", ["md5", "etag", "md5,apache"])
def test_probe_reads_md5_from_content_md5_or_etag(
    server: str, store: HttpImageStore, flags: str
) -> None:
    found = store.probe(f"{server}/f/{flags}/big.img")
    assert found.size == len(FILES["big.img"])
    assert found.checksum == md5(FILES["big.img"])


@pytest.mark.parametrize("flags", ["weaketag", "mpetag", "apache"])
def test_probe_ignores_etags_that_are_not_md5s(
    server: str, store: HttpImageStore, flags: str
) -> None:
    assert store.probe(f"{server}/f/{flags}/small.img").checksum is None


def test_probe_follows_redirects_to_the_true_location(server: str, store: HttpImageStore) -> None:
    once = store.probe(f"{server}/r/1/f/md5/small.img")
    twice = store.probe(f"{server}/r/2/f/md5/small.img")
    for found in (once, twice):
        assert found.location == f"{server}/f/md5/small.img"
        assert found.size == len(FILES["small.img"])
        assert found.checksum == md5(FILES["small.img"])


def test_redirect_depth_is_bounded(server: str, log: pytest.LogCaptureFixture) -> None:
    store = HttpImageStore(max_redirects=2, allow_private=True)
    try:
        assert store.probe(f"{server}/r/2/f/-/small.img").size == len(FILES["small.img"])
        with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
            store.probe(f"{server}/r/3/f/-/small.img")
        unavailable(log, "more than 2 times")
        with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
            store.open(f"{server}/r/3/f/-/small.img")
        unavailable(log, "more than 2")
    finally:
        store.close()
    with pytest.raises(LocationUnavailable):
        HttpImageStore(max_redirects=0, allow_private=True).probe(f"{server}/r/1/f/-/small.img")
    unavailable(log, "redirects")


def test_redirect_loop_is_refused(
    server: str, store: HttpImageStore, log: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
        store.probe(f"{server}/loop/a")
    unavailable(log, r"loop \(at most 5 redirects")


def test_head_refused_falls_back_to_a_one_byte_get(server: str, store: HttpImageStore) -> None:
    found = store.probe(f"{server}/f/nohead,etag/big.img")
    assert found.size == len(FILES["big.img"])
    assert found.checksum == md5(FILES["big.img"])
    assert [(m, r) for m, _, r in Handler.requests] == [("HEAD", None), ("GET", "bytes=0-0")]


def test_content_md5_of_a_partial_answer_is_not_the_files(
    server: str, store: HttpImageStore
) -> None:
    # HEAD refused and Range honoured: the 206's Content-MD5 would be of one byte.
    assert store.probe(f"{server}/f/nohead,md5/small.img").checksum is None
    # Range ignored: the 200 carries the whole file and its Content-MD5.
    found = store.probe(f"{server}/f/nohead,norange,md5/big.img")
    assert (found.size, found.checksum) == (len(FILES["big.img"]), md5(FILES["big.img"]))


def test_a_server_that_tells_no_size_is_refused(
    server: str, store: HttpImageStore, log: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
        store.probe(f"{server}/f/nosize,norange/small.img")
    unavailable(log, "does not tell the size")


def test_size_from_the_range_total_when_head_has_no_length(
    server: str, store: HttpImageStore
) -> None:
    assert store.probe(f"{server}/f/nosize/small.img").size == len(FILES["small.img"])


def test_empty_file(server: str, store: HttpImageStore) -> None:
    assert store.probe(f"{server}/f/-/empty.img").size == 0
    assert store.probe(f"{server}/f/nohead/empty.img").size == 0
    assert read(store, f"{server}/f/-/empty.img") == b""


@pytest.mark.parametrize("path", ["/f/-/nothing.img", "/status/410", "/status/403", "/r/2/nope"])
def test_no_file_is_a_400(
    server: str, store: HttpImageStore, path: str, log: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(LocationUnavailable, match=UNAVAILABLE) as e:
        store.probe(server + path)
    assert (e.value.status, e.value.code) == (400, "location_unavailable")
    unavailable(log, "no image file found at the given location")
    assert not store.exists(server + path)


def test_every_failure_is_the_same_answer(server: str, store: HttpImageStore) -> None:
    """No oracle: a missing file, a server error, a closed port and a refused address all
    answer the same, for a probe and for a download."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    locations = [
        f"{server}/f/-/nothing.img",
        f"{server}/status/500",
        f"http://127.0.0.1:{closed}/x.img",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/x",
    ]
    answers = set()
    for location in locations:
        for call in (store.probe, store.open):
            with pytest.raises(LocationUnavailable) as e:
                call(location)
            answers.add((type(e.value), e.value.status, e.value.code, str(e.value.to_dict())))
    assert len(answers) == 1, answers


def test_exists_and_size(server: str, store: HttpImageStore) -> None:
    assert store.exists(f"{server}/r/1/f/-/small.img")
    assert store.size(f"{server}/f/-/big.img") == len(FILES["big.img"])
    with pytest.raises(NotFound):
        store.size(f"{server}/f/-/nothing.img")


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "ftp://127.0.0.1/x.img", "s3://bucket/x", "not a url", ""]
)
def test_unsupported_locations(store: HttpImageStore, location: str) -> None:
    with pytest.raises(InvalidRequest, match="unsupported location"):
        store.probe(location)
    with pytest.raises(InvalidRequest, match="unsupported location"):
        store.open(location)


def test_redirect_to_another_scheme_is_refused(
    server: str, store: HttpImageStore, log: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
        store.probe(f"{server}/to?url=file:///etc/passwd")
    unavailable(log, "unsupported location")


def test_credentials_in_the_url_are_refused(
    server: str, store: HttpImageStore, log: pytest.LogCaptureFixture
) -> None:
    netloc = server.removeprefix("http://")
    for location in (f"http://alice:s3cret@{netloc}/f/-/small.img", f"http://tok@{netloc}/f/-/a"):
        with pytest.raises(InvalidRequest, match="carries credentials") as e:
            store.probe(location)
        assert e.value.status == 400
        assert "s3cret" not in e.value.message
    quoted = urllib.parse.quote(f"http://bob:hunter2@{netloc}/f/-/small.img", safe="")
    with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
        store.probe(f"{server}/to?url={quoted}")
    unavailable(log, "carries credentials")
    assert "hunter2" not in log.text
    assert Handler.requests == [("HEAD", f"/to?url={quoted}", None)]


def test_query_tokens_stay_out_of_logs_and_messages(
    server: str, store: HttpImageStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lamina")
    found = store.probe(f"{server}/r/1/f/-/small.img?X-Token=topsecret")
    assert found.location == f"{server}/f/-/small.img?X-Token=topsecret"
    with pytest.raises(InvalidRequest) as e:
        store.probe(f"{server}/f/-/nothing.img?X-Token=topsecret")
    assert "topsecret" not in e.value.message
    assert caplog.records and "topsecret" not in caplog.text


# -- open ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", ["-", "norange"])
@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, None), (0, 1), (1, None), (5000, 100), (CHUNK - 1, 2), (CHUNK + 7, 2 * CHUNK), (0, 10**9)],
)
def test_ranged_reads_return_the_right_bytes(
    server: str, store: HttpImageStore, flags: str, offset: int, length: int | None
) -> None:
    data = FILES["big.img"]
    end = None if length is None else offset + length
    assert read(store, f"{server}/f/{flags}/big.img", offset, length) == data[offset:end]


def test_ranged_reads_send_range_and_follow_redirects(server: str, store: HttpImageStore) -> None:
    assert read(store, f"{server}/r/2/f/-/small.img", 10, 20) == FILES["small.img"][10:30]
    assert read(store, f"{server}/f/-/small.img", 9000) == FILES["small.img"][9000:]
    assert [r for _, _, r in Handler.requests] == ["bytes=10-29"] * 3 + ["bytes=9000-"]


def test_reads_past_the_end_and_empty_reads(server: str, store: HttpImageStore) -> None:
    size = len(FILES["small.img"])
    assert read(store, f"{server}/f/-/small.img", size) == b""
    assert read(store, f"{server}/f/norange/small.img", size + 5) == b""
    assert read(store, f"{server}/f/-/small.img", 3, 0) == b""
    with pytest.raises(InvalidRequest):
        store.open(f"{server}/f/-/small.img", -1)


def test_full_stream_equals_the_file_in_chunks(server: str, store: HttpImageStore) -> None:
    pieces = list(store.open(f"{server}/f/-/big.img"))
    assert b"".join(pieces) == FILES["big.img"]
    assert max(len(p) for p in pieces) == CHUNK
    assert all(pieces)


def test_an_abandoned_stream_can_be_closed(server: str, store: HttpImageStore) -> None:
    body = store.open(f"{server}/f/-/big.img")
    assert len(next(body)) == CHUNK
    body.close()  # type: ignore[attr-defined]
    store.open(f"{server}/f/-/big.img")  # never read: dropping it must not leak or hang
    assert read(store, f"{server}/f/-/small.img") == FILES["small.img"]


def test_open_of_a_missing_file_is_unavailable(server: str, store: HttpImageStore) -> None:
    with pytest.raises(LocationUnavailable):
        store.open(f"{server}/f/-/nothing.img")
    with pytest.raises(LocationUnavailable):
        store.open(f"{server}/status/410", 5, 5)
    with pytest.raises(LocationUnavailable):
        store.open(f"{server}/status/500")


def test_an_unreachable_server_is_named_in_the_log_only(
    store: HttpImageStore, log: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
        store.open(f"http://127.0.0.1:{port}/x.img")
    unavailable(log, f"127.0.0.1:{port}")
    with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
        store.probe(f"http://127.0.0.1:{port}/x.img")
    unavailable(log, f"127.0.0.1:{port}")


# -- read-only -------------------------------------------------------------------------------


def test_save_is_refused(store: HttpImageStore) -> None:
    assert not store.capabilities.writable
    assert store.capabilities.ranged
    with pytest.raises(InvalidRequest, match="the http store is read-only") as e:
        store.save("x.img", [b"data"])
    assert e.value.status == 400


def test_delete_leaves_the_remote_file_alone(server: str, store: HttpImageStore) -> None:
    store.delete(f"{server}/f/-/small.img")
    assert Handler.requests == []
    assert store.exists(f"{server}/f/-/small.img")
    with pytest.raises(InvalidRequest):
        store.delete("file:///etc/passwd")


# -- private addresses -----------------------------------------------------------------------


def test_private_addresses_are_refused_by_default(
    server: str, log: pytest.LogCaptureFixture
) -> None:
    store = HttpImageStore()
    port = server.rsplit(":", 1)[1]
    Handler.requests.clear()
    try:
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433", "[::1]"):
            with pytest.raises(LocationUnavailable, match=UNAVAILABLE) as e:
                store.probe(f"http://{host}:{port}/f/-/small.img")
            assert e.value.status == 400
            unavailable(log, "refused addresses")
        with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
            store.open(f"{server}/f/-/small.img")
        assert Handler.requests == []
    finally:
        store.close()


def test_the_guard_checks_resolved_names_and_connects_to_what_it_checked(
    server: str, monkeypatch: pytest.MonkeyPatch, log: pytest.LogCaptureFixture
) -> None:
    """A public-looking name that resolves to loopback is refused, after DNS; allowed, the
    connection goes to the very address that was checked (the system's resolver does not
    know the name), with the name in the Host header."""
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[fetchpolicy.IPAddress]:
        asked.append(host)
        return fetchpolicy.resolve("127.0.0.1", port)

    monkeypatch.setattr(fetchpolicy, "_resolver", resolver)
    port = server.rsplit(":", 1)[1]
    location = f"http://images.example:{port}/f/-/small.img"
    refusing = HttpImageStore()
    try:
        with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
            refusing.probe(location)
        unavailable(log, r"images.example resolves to refused addresses: 127.0.0.1")
    finally:
        refusing.close()
    asked.clear()
    Handler.hosts.clear()
    allowing = HttpImageStore(allow_private=True)
    try:
        assert allowing.probe(location).size == len(FILES["small.img"])
    finally:
        allowing.close()
    assert asked == ["images.example"]
    assert Handler.hosts == [f"images.example:{port}"]


def test_the_guard_checks_every_redirect(
    server: str, monkeypatch: pytest.MonkeyPatch, log: pytest.LogCaptureFixture
) -> None:
    """With 127.0.0.1 counted as public, the server's redirect to 127.0.0.2 is refused."""
    real = fetchpolicy.refused

    def refused(address: fetchpolicy.IPAddress, policy: fetchpolicy.FetchPolicy) -> bool:
        return str(address) != "127.0.0.1" and real(address, policy)

    monkeypatch.setattr(fetchpolicy, "refused", refused)
    store = HttpImageStore()
    port = server.rsplit(":", 1)[1]
    try:
        assert store.probe(f"{server}/r/1/f/-/small.img").size == len(FILES["small.img"])
        target = urllib.parse.quote(f"http://127.0.0.2:{port}/f/-/small.img", safe="")
        with pytest.raises(LocationUnavailable, match=UNAVAILABLE):
            store.probe(f"{server}/to?url={target}")
        unavailable(log, "127.0.0.2")
    finally:
        store.close()
