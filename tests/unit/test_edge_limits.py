"""The edge middleware on a bare ASGI app: bodies refused on their length before a byte is
read, cut off where they cross the limit, NUL in the URL, oversized headers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from lamina.api.edge import EdgeMiddleware, body_guard

LIMIT = 1000


async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers its length; lifts the limit if asked to."""
    guard = body_guard(scope)
    assert guard is not None
    if scope["path"] == "/upload":
        guard.lift()
    elif scope["path"] == "/signed-upload":
        guard.lift(2 * LIMIT)
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def refusing_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers without reading the body (as authentication does when it refuses)."""
    await send({"type": "http.response.start", "status": 403, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def call(
    app: Any,
    *,
    path: str = "/x",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    parts: list[bytes] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes, int]:
    """Run one request; return status, headers, body and how many parts were read."""
    parts = list(parts or [])
    read = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal read
        if read >= len(parts):
            return {"type": "http.disconnect"}
        read += 1
        return {"type": "http.request", "body": parts[read - 1], "more_body": read < len(parts)}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers or [],
    }
    edge = EdgeMiddleware(app, max_body_bytes=LIMIT, max_header_bytes=16 * 1024)
    asyncio.run(edge(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, read


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    status, headers, body, read = call(
        reading_app,
        headers=[(b"content-type", b"application/json"), (b"content-length", b"5000")],
        parts=[b"x" * 5000],
    )
    assert (status, json.loads(body)["code"], read) == (413, "request_too_large", 0)
    assert headers[b"connection"] == b"close"


def test_an_octet_stream_body_is_limited_until_its_route_lifts_the_limit() -> None:
    octet = [(b"content-type", b"application/octet-stream"), (b"content-length", b"3000")]
    status, _, body, read = call(reading_app, headers=octet, parts=[b"x" * 1000] * 3)
    assert (status, json.loads(body)["code"], read) == (413, "request_too_large", 0)
    status, _, body, read = call(
        reading_app, path="/upload", headers=octet, parts=[b"x" * 1000] * 3
    )
    assert (status, json.loads(body), read) == (200, {"size": 3000}, 3)
    status, _, body, _ = call(
        reading_app, path="/signed-upload", headers=octet, parts=[b"x" * 3000]
    )
    assert (status, json.loads(body)["code"]) == (413, "request_too_large")
    smaller = [(b"content-type", b"application/octet-stream"), (b"content-length", b"1500")]
    status, _, body, _ = call(
        reading_app, path="/signed-upload", headers=smaller, parts=[b"x" * 1500]
    )
    assert (status, json.loads(body)) == (200, {"size": 1500})


def test_a_chunked_body_is_cut_off_where_it_crosses_the_limit() -> None:
    status, _, body, read = call(
        reading_app,
        headers=[(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        parts=[b"x" * 600] * 10,
    )
    assert (status, json.loads(body)["code"], read) == (413, "request_too_large", 2)
    status, _, body, _ = call(
        reading_app, headers=[(b"transfer-encoding", b"chunked")], parts=[b"x" * 600]
    )
    assert (status, json.loads(body)) == (200, {"size": 600})


def test_an_answer_with_the_body_unread_closes_the_connection() -> None:
    status, headers, _, read = call(
        refusing_app, headers=[(b"content-length", b"10")], parts=[b"x" * 10]
    )
    assert (status, headers.get(b"connection"), read) == (403, b"close", 0)
    status, headers, _, _ = call(refusing_app)
    assert (status, headers.get(b"connection")) == (403, None)


def test_nul_in_the_url_and_oversized_headers_are_refused() -> None:
    for path, query in (("/images/a\x00b", b""), ("/images", b"a%00=1"), ("/images", b"a=%00")):
        status, _, body, _ = call(reading_app, path=path, query=query)
        assert (status, json.loads(body)["code"]) == (400, "invalid_request")
    status, _, body, _ = call(reading_app, headers=[(b"x-big", b"y" * 17 * 1024)])
    assert (status, json.loads(body)["code"]) == (431, "headers_too_large")
