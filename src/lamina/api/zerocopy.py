"""Zero-copy file responses: the ASGI ``http.response.zerocopysend`` extension, which uvicorn
does not implement, done here for its httptools protocol on plain HTTP.

A download streamed through Python costs two copies of every byte (file to ``bytes``, ``bytes``
to the socket) and a thread hop per chunk; ``sendfile(2)`` costs none, and is what a static
file server does. ``ZeroCopy`` wraps the whole application (outside FastAPI's own middleware,
which hides the server's ``send``): for a connection it can serve, it announces the extension
in ``scope["extensions"]``, and answers a ``http.response.zerocopysend`` message by waiting
until the headers have left, then running ``sendfile`` on the connection's socket in a thread
of its own, waiting on ``poll`` whenever the socket is full. It then tells uvicorn how many body
bytes went out (uvicorn checks them against ``Content-Length``) and finishes the response with
an empty body message. TLS connections, chunked responses and other servers or protocols get
no extension, and the application streams as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
from collections.abc import Mapping
from typing import Any, BinaryIO

import anyio.to_thread
from anyio import CapacityLimiter
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
EXTENSION = "http.response.zerocopysend"
#: A client that reads nothing for this long is dropped.
STALL_SECONDS = 60
#: Downloads sending at once; their threads are apart from the pool the handlers use.
_SENDERS = CapacityLimiter(64)


class ZeroCopy:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = getattr(send, "__self__", None)
        if scope["type"] != "http" or not _servable(cycle):
            await self.app(scope, receive, send)
            return
        scope.setdefault("extensions", {})[EXTENSION] = {}

        async def send_file(message: Message) -> None:
            if message["type"] != EXTENSION:
                await send(message)
                return
            more = bool(message.get("more_body", False))
            if getattr(cycle, "chunked_encoding", False):
                raise RuntimeError(f"{EXTENSION} needs a Content-Length response")
            try:
                sent = await _send(cycle, message["file"], message.get("offset"), message["count"])
            except OSError as exc:  # the client went away or stopped reading
                log.info("download to %s stopped: %s", scope.get("client"), exc)
                cycle.transport.close()  # type: ignore[union-attr]
                await asyncio.sleep(0)  # uvicorn marks the connection lost: no more sends
                return
            cycle.expected_content_length -= sent  # type: ignore[union-attr]
            await send({"type": "http.response.body", "body": b"", "more_body": more})

        await self.app(scope, receive, send_file)


def _servable(cycle: object) -> bool:
    if type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
        return False
    transport = getattr(cycle, "transport", None)
    return (
        transport is not None
        and hasattr(cycle, "expected_content_length")
        and transport.get_extra_info("sslcontext") is None
        and transport.get_extra_info("socket") is not None
    )


async def _send(cycle: Any, file: Any, offset: int | None, count: int) -> int:
    transport = cycle.transport
    # The status line and headers are still in the transport's buffer if the socket was full.
    while transport.get_write_buffer_size() and not transport.is_closing():
        await asyncio.sleep(0.001)
    if transport.is_closing():
        raise ConnectionResetError("the client went away before the file")
    # A descriptor of our own: should uvloop close the connection meanwhile (a reset seen by
    # its reader), the thread must not go on writing to a number the process may have
    # reused for another connection or file.
    fd = os.dup(transport.get_extra_info("socket").fileno())
    try:
        start = file.tell() if offset is None else offset
        sent: int = await anyio.to_thread.run_sync(
            _sendfile, fd, file.fileno(), start, count, limiter=_SENDERS
        )
    finally:
        os.close(fd)
    return sent


def _sendfile(socket_fd: int, file_fd: int, offset: int, count: int) -> int:
    """``count`` bytes from ``offset`` onto the non-blocking socket, waiting while it is full."""
    poller = select.poll()
    poller.register(socket_fd, select.POLLOUT)
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(socket_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            if not poller.poll(STALL_SECONDS * 1000):
                raise TimeoutError(f"the client read nothing for {STALL_SECONDS} s") from None
            continue
        if n == 0:
            raise OSError(f"the file ended {count - sent} bytes early")
        sent += n
    return sent


class ZeroCopyFileResponse(Response):
    """``count`` bytes of an open file from ``offset``, sent with ``sendfile`` (for a request
    whose scope announces the extension); the response closes the file."""

    def __init__(
        self,
        file: BinaryIO,
        offset: int,
        count: int,
        *,
        status_code: int,
        headers: Mapping[str, str],
        media_type: str,
    ) -> None:
        super().__init__(status_code=status_code, headers=headers, media_type=media_type)
        self.file, self.offset, self.count = file, offset, count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.file:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await send(
                {"type": EXTENSION, "file": self.file, "offset": self.offset, "count": self.count}
            )
