"""The manager's edge: what every request must pass before any route sees it, and before a
byte of its body is buffered.

- The request line and headers together are at most ``manager.max_header_bytes``: uvicorn's
  httptools protocol (the one ``lamina serve`` runs) keeps whatever arrives, so
  ``BoundedHttpTools`` counts while they arrive and answers ``431 headers_too_large``; the
  middleware checks the total again for any other server.
- No NUL in the path or the query (decoded): ``400 invalid_request``. Databases cannot store
  NUL in text, and no name or filter of Lamina's holds one.
- A body is at most ``manager.max_body_bytes``: a ``Content-Length`` above that is refused
  (``413 request_too_large``) at once, unless the body is ``application/octet-stream`` (an
  image upload may be any size, and whether this request is one is known only once it has
  been routed and authenticated); a body that grows past its limit, chunked or not, is cut
  off at the byte that crosses it. An upload route lifts the limit with ``BodyGuard.lift``
  once the caller is authenticated (``lamina.api.auth``).
- A response sent while the request's body is still unread closes the connection, so a client
  cannot go on pushing a refused body through it.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lamina.errors import HeadersTooLarge, InvalidRequest, LaminaError, PayloadTooLarge

log = logging.getLogger(__name__)
GUARD = "lamina.body_guard"
OCTET_STREAM = "application/octet-stream"
#: What the header limit counts per header besides its name and value (": ", CRLF), so that
#: many empty headers cost something too.
HEADER_OVERHEAD = 4


def media_type(content_type: str | None) -> str:
    """The ``type/subtype`` of a Content-Type, lower case, without parameters."""
    return (content_type or "").partition(";")[0].strip().lower()


class BodyGuard:
    """Counts a request's body as the application receives it and refuses what crosses the
    limit. One per request, in ``scope[GUARD]``."""

    def __init__(self, limit: int, declared: int | None) -> None:
        self.limit: int | None = limit
        self.declared = declared
        self.received = 0
        self.complete = declared == 0
        self.overflowed = False

    def lift(self, limit: int | None = None) -> None:
        """Raise this request's limit to ``limit`` (None: no limit): its route streams the
        body (an upload), and its caller is authenticated."""
        if limit is None or self.limit is None:
            self.limit = None
        else:
            self.limit = max(self.limit, limit)

    def check_declared(self) -> None:
        if self.limit is not None and self.declared is not None and self.declared > self.limit:
            self.overflowed = True
            raise _too_large(self.limit)

    def count(self, message: Message) -> None:
        if message["type"] != "http.request":
            return
        self.received += len(message.get("body", b""))
        if not message.get("more_body", False):
            self.complete = True
        over_declared = self.declared is not None and self.received > self.declared
        if over_declared or (self.limit is not None and self.received > self.limit):
            self.overflowed = True
            raise _too_large(self.limit if self.limit is not None else self.declared or 0)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request's body is larger than {limit} bytes: only image uploads "
        f"(Content-Type: {OCTET_STREAM}) may be bigger"
    )


def body_guard(scope: Scope) -> BodyGuard | None:
    guard = scope.get(GUARD)
    return guard if isinstance(guard, BodyGuard) else None


class EdgeMiddleware:
    """Pure ASGI, outermost: see the module's docstring."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            guard = self._admit(scope)
        except LaminaError as exc:
            await _answer(send, exc, close=True)
            return
        scope[GUARD] = guard
        started = False
        replaced = False

        async def guarded_receive() -> Message:
            if not guard.received:
                guard.check_declared()
            message = await receive()
            guard.count(message)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                started = True
                if guard.overflowed:
                    # Whatever the application made of a cut-off body (FastAPI calls it a
                    # body it could not parse), the answer is that it was too large.
                    replaced = True
                    await _answer(send, _too_large(guard.limit or 0), close=True)
                    return
                if not guard.complete:
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except PayloadTooLarge as exc:
            if started:
                raise
            await _answer(send, exc, close=True)

    def _admit(self, scope: Scope) -> BodyGuard:
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
        size += sum(len(k) + len(v) + HEADER_OVERHEAD for k, v in headers)
        if size > self.max_header_bytes:
            raise HeadersTooLarge(
                f"the request line and headers are larger than {self.max_header_bytes} bytes"
            )
        query: bytes = scope.get("query_string", b"")
        if "\x00" in scope.get("path", "") or b"\x00" in unquote_to_bytes(query):
            raise InvalidRequest("the path or the query holds a NUL character")
        declared: int | None = None
        kind = ""
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise InvalidRequest("Content-Length is not a number") from None
            elif name == b"content-type":
                kind = media_type(value.decode("latin-1"))
            elif name == b"transfer-encoding":
                chunked = True
        if declared is None and not chunked:
            declared = 0
        guard = BodyGuard(self.max_body_bytes, declared)
        if kind != OCTET_STREAM:
            guard.check_declared()
        return guard


async def _answer(send: Send, exc: LaminaError, *, close: bool) -> None:
    body = json.dumps(exc.to_dict()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _HeadersTooLong(Exception):
    pass


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on the request line and headers, counted as
    they arrive: httptools itself keeps any amount. Set ``limit`` (a class attribute) before
    the server starts; ``lamina serve`` sets it from ``manager.max_header_bytes``."""

    limit = 128 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._too_long = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limit:
            self._too_long = True
            raise _HeadersTooLong  # the parser stops; uvicorn answers via send_400_response

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + HEADER_OVERHEAD)
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, in the error envelope: 431 for
        headers over the limit, else 400 (a NUL or another byte HTTP forbids, say)."""
        exc: LaminaError = InvalidRequest(f"not a valid HTTP request: {msg}")
        reason = b"Bad Request"
        if self._too_long:
            exc = HeadersTooLarge(
                f"the request line and headers are larger than {self.limit} bytes"
            )
            reason = b"Request Header Fields Too Large"
        body = json.dumps(exc.to_dict()).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (exc.status, reason)
            + b"content-type: application/json\r\n"
            + b"content-length: %d\r\n" % len(body)
            + b"connection: close\r\n\r\n"
            + body
        )
        self.transport.close()
