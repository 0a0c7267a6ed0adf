"""Fetching one file of a channel from its mirrors, into the caller's sink.

Mirrors are tried in order. One that cannot be reached, answers an error, or serves bytes that
are not the file (wrong size or SHA-256) is skipped for the next, so one image server going
down never stops an install. The body streams in 1 MiB blocks through SHA-256 into the sink
(constant memory whatever the size). A download resumes where it stopped, from the bytes the
sink already holds, with an HTTP ``Range`` request; a mirror that ignores ``Range`` sends the
whole file again. Bytes from a mirror that died mid-way are kept and the next mirror continues
from them; if the result then has the wrong digest it is fetched once more from the start.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from lamina.errors import BackendUnavailable
from lamina.fetchpolicy import FetchPolicy, http_client

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
#: ``progress(bytes_done, total_bytes)``, called after each block.
Progress = Callable[[int, int], None]
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Sink(Protocol):
    """Where the file goes: a seekable binary file opened for reading and writing (``w+b``
    or ``r+b``)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def write(self, data: bytes, /) -> int: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def truncate(self, size: int | None = None, /) -> int: ...


class MirrorsFailed(BackendUnavailable):
    """No mirror served the file; ``failures`` says why for each."""

    def __init__(self, sha256: str, failures: list[tuple[str, str]]) -> None:
        reasons = "; ".join(f"{url}: {reason}" for url, reason in failures)
        super().__init__(
            f"no mirror served the file with sha256 {sha256}: {reasons}",
            sha256=sha256,
            failures=[{"url": url, "reason": reason} for url, reason in failures],
        )
        self.failures = failures


@dataclass(frozen=True)
class Fetched:
    url: str | None  # the mirror that served it; None if the sink already held all of it
    downloaded: int  # bytes that came over the network


class _WrongContent(Exception):
    """The mirror served bytes that are not the file's: the sink's content is suspect."""


class _BadAnswer(Exception):
    """The mirror's answer, before any byte of it was kept, shows it is not serving the file."""


class _Download:
    def __init__(self, sink: Sink, sha256: str, size: int, progress: Progress | None) -> None:
        self.sink, self.sha256, self.size, self.progress = sink, sha256, size, progress
        self.hash: Any = hashlib.sha256()
        self.done = 0
        self.downloaded = 0

    def resume(self, start: int) -> None:
        """Hash the ``start`` bytes the sink already holds, and drop anything after them."""
        self.sink.seek(0)
        while self.done < start and (block := self.sink.read(min(CHUNK, start - self.done))):
            self.hash.update(block)
            self.done += len(block)
        self.sink.seek(self.done)
        self.sink.truncate(self.done)

    def restart(self) -> None:
        self.sink.seek(0)
        self.sink.truncate(0)
        self.hash = hashlib.sha256()
        self.done = 0

    def complete(self) -> bool:
        return self.done == self.size and self.hash.hexdigest() == self.sha256

    def from_mirror(self, client: httpx.Client, url: str) -> None:
        headers = {"Accept-Encoding": "identity"}
        if self.done:
            headers["Range"] = f"bytes={self.done}-"
        with client.stream("GET", url, headers=headers) as response:
            response.raise_for_status()
            if response.status_code == 206:
                self._check_range(response.headers.get("content-range", ""))
            elif response.status_code == 200:
                if self.done:
                    self.restart()  # the server ignored Range: the whole file comes again
            else:
                raise _BadAnswer(f"unexpected HTTP status {response.status_code}")
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and self.done + int(length) != self.size:
                raise _BadAnswer(f"serves {self.done + int(length)} bytes, not {self.size}")
            for block in response.iter_raw(CHUNK):
                if self.done + len(block) > self.size:
                    raise _WrongContent(f"serves more than {self.size} bytes")
                self.sink.write(block)
                self.hash.update(block)
                self.done += len(block)
                self.downloaded += len(block)
                if self.progress is not None:
                    self.progress(self.done, self.size)
        if self.done != self.size:
            raise httpx.ReadError(f"the body ended at byte {self.done} of {self.size}")
        if self.hash.hexdigest() != self.sha256:
            raise _WrongContent(f"sha256 is {self.hash.hexdigest()}, not {self.sha256}")

    def _check_range(self, header: str) -> None:
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if match is None or int(match[1]) != self.done:
            raise _BadAnswer(f"answered Range bytes={self.done}- with {header!r}")
        if match[3] != "*" and int(match[3]) != self.size:
            raise _BadAnswer(f"the file has {match[3]} bytes, not {self.size}")


def fetch(
    urls: Sequence[str],
    sha256: str,
    size: int,
    sink: Sink,
    *,
    start: int = 0,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
) -> Fetched:
    """Fill ``sink`` with the file of this SHA-256 and size from the first mirror of ``urls``
    that serves it. ``start``: bytes of the file the sink already holds (an interrupted
    download), which are kept and not fetched again if they are right. On return the sink
    holds exactly the file. Raise MirrorsFailed (503), with each mirror's reason, when none
    served it; the sink then holds whatever valid-looking prefix was received, to resume
    from. ``client``: an ``httpx.Client`` to use (else one of ``lamina.fetchpolicy``, refusing
    private addresses, with 10 s connect and 30 s read timeouts)."""
    download = _Download(sink, sha256, size, progress)
    download.resume(min(start, size))
    if download.complete():
        return Fetched(None, 0)
    if download.done == size:
        download.restart()  # all the bytes, but not the file's
    own = client is None
    http = client or http_client(FetchPolicy(), timeout=httpx.Timeout(30, connect=10))
    failures: list[tuple[str, str]] = []
    try:
        for url in urls:
            for _ in range(2):
                resumed = download.done > 0
                try:
                    download.from_mirror(http, url)
                    return Fetched(url, download.downloaded)
                except _WrongContent as exc:
                    download.restart()
                    reason = f"wrong content: {exc}"
                    if resumed:
                        continue  # the fault may be in the bytes we resumed from: once more
                except _BadAnswer as exc:
                    reason = f"wrong answer: {exc}"
                except httpx.HTTPStatusError as exc:
                    reason = f"HTTP {exc.response.status_code}"
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                break
            log.warning("mirror %s did not serve sha256 %s: %s", url, sha256, reason)
            failures.append((url, reason))
    finally:
        if own:
            http.close()
    raise MirrorsFailed(sha256, failures)
