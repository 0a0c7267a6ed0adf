"""Moving image bytes between HTTP and a store with constant memory.

Uploads: the request body arrives on the event loop in small pieces; a worker thread runs the
store's (blocking) write and pulls the body in blocks of about 1 MiB across the thread
boundary, so the manager holds a few blocks at a time whatever the image's size. Downloads
stream the store's chunks straight into the response.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import cast

import anyio.from_thread

from lamina.errors import RangeNotSatisfiable
from lamina.stores.base import CHUNK

HEARTBEAT_SECONDS = 10.0


async def _next_block(stream: AsyncIterator[bytes], size: int) -> bytearray:
    # A fresh bytearray per block, handed on as it is: nothing mutates it afterwards, and
    # copying it into bytes would cost a second copy of every upload.
    block = bytearray()
    while len(block) < size:
        try:
            block += await stream.__anext__()
        except StopAsyncIteration:
            break
    return block


def body_blocks(
    stream: AsyncIterator[bytes], heartbeat: Callable[[], None] | None = None
) -> Iterator[bytes]:
    """The request body as blocks, for a worker thread started with ``anyio.to_thread``.
    ``heartbeat`` is called every few seconds (the upload's sign of life)."""
    last = time.monotonic()
    while True:
        block = anyio.from_thread.run(_next_block, stream, CHUNK)
        if not block:
            return
        if heartbeat is not None and time.monotonic() - last > HEARTBEAT_SECONDS:
            heartbeat()
            last = time.monotonic()
        yield cast(bytes, block)  # a bytearray: stores and digests take either


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(offset, length)`` of a single-range ``Range: bytes=...`` header, None for the whole
    file; a range outside the file raises 416."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or (not match[1] and not match[2]):
        return None  # not a single byte range: RFC 9110 lets us send the whole file
    if match[1]:
        start = int(match[1])
        end = int(match[2]) if match[2] else size - 1
    else:
        start, end = max(size - int(match[2]), 0), size - 1
    end = min(end, size - 1)
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"range {header!r} is outside the file's {size} bytes", size=size)
    return start, end - start + 1
