"""MD5 and SHA-256 of a stream, computed beside the I/O rather than after it.

Each digest runs in its own thread fed through a small bounded queue: hashlib releases the
GIL on large buffers, so on two cores the digests proceed while the stream is written. The
queues bound memory to a few chunks whatever the stream's size.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

DEPTH = 4


class _Digest:
    def __init__(self, algorithm: str) -> None:
        self.hash: Any = hashlib.new(algorithm)
        self.queue: queue.Queue[bytes | None] = queue.Queue(DEPTH)
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"hash-{algorithm}")
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            self.hash.update(chunk)

    def finish(self) -> str:
        self.queue.put(None)
        self.thread.join()
        return str(self.hash.hexdigest())


class StreamDigests:
    """Wraps a stream of chunks; after it is consumed, ``md5`` and ``sha256`` hold the
    digests and ``size`` the byte count."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.size = 0
        self.md5: str | None = None
        self.sha256: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        digests = [_Digest("md5"), _Digest("sha256")]
        try:
            for chunk in self._chunks:
                for digest in digests:
                    digest.queue.put(chunk)
                self.size += len(chunk)
                yield chunk
        finally:
            md5, sha256 = (d.finish() for d in digests)
        self.md5, self.sha256 = md5, sha256
