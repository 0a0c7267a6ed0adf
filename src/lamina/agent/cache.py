"""The host's content-addressed image cache, with STORM's download progress and speed.

Files live at ``<cache>/<sha256>``; a file is hashed while it streams in (constant memory)
and renamed into place only when complete, so a half-fetched file is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lamina.agent.wire import CacheEntry, DownloadStatus, Transfer
from lamina.errors import BackendUnavailable, Conflict, InvalidRequest, NotFound

CHUNK = 1024 * 1024


@dataclass
class _Transfer:
    source: str
    total: int | None
    done: int = 0
    started: float = field(default_factory=time.monotonic)


class DownloadTracker:
    """What is being fetched right now, for get_downloadprogress/get_downloadspeed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, _Transfer] = {}

    def begin(self, source: str, total: int | None) -> _Transfer:
        transfer = _Transfer(source, total)
        with self._lock:
            self._active[id(transfer)] = transfer
        return transfer

    def end(self, transfer: _Transfer) -> None:
        with self._lock:
            self._active.pop(id(transfer), None)

    def status(self) -> DownloadStatus:
        with self._lock:
            active = list(self._active.values())
        if not active:
            return DownloadStatus(progress=-1, speed_kbps=-1, active=[])
        now = time.monotonic()
        done = sum(t.done for t in active)
        total = sum(t.total or 0 for t in active)
        elapsed = max(now - min(t.started for t in active), 1e-3)
        return DownloadStatus(
            progress=min(done / total, 0.999) if total else 0.0,
            speed_kbps=round(done / 1024 / elapsed, 1),
            active=[t.source for t in active],
            transfers=[
                Transfer(
                    source=t.source,
                    bytes_done=t.done,
                    bytes_total=t.total,
                    rate=round(t.done / max(now - t.started, 1e-3), 1),
                )
                for t in active
            ],
        )


class ImageCache:
    def __init__(self, root: Path, tracker: DownloadTracker) -> None:
        self.root = root
        self.tracker = tracker
        root.mkdir(parents=True, exist_ok=True)
        self._index_path = root / "sources.json"
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / digest

    def check(self, digest: str) -> CacheEntry:
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f"image {digest} is not in this host's cache", sha256=digest)
        return CacheEntry(sha256=digest, size=path.stat().st_size, path=str(path))

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def entries(self) -> list[CacheEntry]:
        return [
            CacheEntry(sha256=p.name, size=p.stat().st_size, path=str(p))
            for p in self.root.iterdir()
            if len(p.name) == 64
        ]

    def install(self, source: str, sha256: str | None = None) -> CacheEntry:
        """Fetch ``source`` into the cache unless it is there already, and return it."""
        if sha256 and (self.root / sha256).is_file():
            return self.check(sha256)
        known = self._known(source)
        if known and (self.root / known).is_file() and not sha256:
            return self.check(known)
        parsed = urllib.parse.urlsplit(source)
        if parsed.scheme in ("http", "https"):
            entry = self._fetch_http(source, sha256)
        elif parsed.scheme == "file" or (not parsed.scheme and source.startswith("/")):
            entry = self._copy_file(Path(urllib.parse.unquote(parsed.path)), source, sha256)
        else:
            raise InvalidRequest(f"cannot fetch {source!r}: use an absolute path or a URL")
        self._remember(source, entry.sha256, _file_key(source))
        return entry

    def _copy_file(self, path: Path, source: str, expected: str | None) -> CacheEntry:
        try:
            size = path.stat().st_size
            f = path.open("rb")
        except OSError as exc:
            raise NotFound(f"cannot read {path}: {exc.strerror}", source=source) from None
        with f:
            return self._store(source, size, iter(lambda: f.read(CHUNK), b""), expected)

    def _fetch_http(self, url: str, expected: str | None) -> CacheEntry:
        try:
            with httpx.stream("GET", url, timeout=30, follow_redirects=True) as response:
                if response.status_code != 200:
                    raise BackendUnavailable(f"GET {url} answered {response.status_code}")
                length = response.headers.get("content-length")
                total = int(length) if length else None
                return self._store(url, total, response.iter_bytes(CHUNK), expected)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"cannot fetch {url}: {exc}") from None

    def _store(
        self, source: str, total: int | None, chunks: object, expected: str | None
    ) -> CacheEntry:
        """Stream ``chunks`` into the cache under their digest. A digest other than
        ``expected`` raises ``Conflict`` before anything is renamed into place, so an entry
        already cached under that digest (perhaps a guest disk's backing file) is untouched."""
        digest = hashlib.sha256()
        transfer = self.tracker.begin(source, total)
        tmp = self.root / f".partial-{os.getpid()}-{threading.get_ident()}"
        try:
            with tmp.open("wb") as out:
                for chunk in chunks:  # type: ignore[attr-defined]
                    out.write(chunk)
                    digest.update(chunk)
                    transfer.done += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected and digest.hexdigest() != expected:
                raise Conflict(
                    f"{source} has digest {digest.hexdigest()}, not the expected {expected}",
                    source=source,
                )
            final = self.root / digest.hexdigest()
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
            self.tracker.end(transfer)
        return CacheEntry(sha256=final.name, size=final.stat().st_size, path=str(final))

    def adopt(self, path: Path) -> CacheEntry:
        """Move ``path`` (a file on the cache's filesystem) into the cache under its digest."""
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
            os.fsync(f.fileno())
        final = self.root / digest.hexdigest()
        os.replace(path, final)
        return self.check(final.name)

    # A source's last digest, so a local file or URL already fetched is not fetched again.
    def _known(self, source: str) -> str | None:
        with self._lock:
            index = self._read_index()
        record = index.get(source)
        if record and record.get("key") == _file_key(source):
            return str(record["sha256"])
        return None

    def _remember(self, source: str, digest: str, key: str | None) -> None:
        with self._lock:
            index = self._read_index()
            index[source] = {"sha256": digest, "key": key}
            tmp = self._index_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(index))
            os.replace(tmp, self._index_path)

    def _read_index(self) -> dict[str, dict[str, object]]:
        try:
            return dict(json.loads(self._index_path.read_text()))
        except (OSError, ValueError):
            return {}


def _file_key(source: str) -> str | None:
    """Size and mtime of a local source, so a changed file is fetched again."""
    parsed = urllib.parse.urlsplit(source)
    if parsed.scheme in ("http", "https"):
        return None
    try:
        st = Path(urllib.parse.unquote(parsed.path)).stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidRequest(f"{digest!r} is not a SHA-256 hex digest")
