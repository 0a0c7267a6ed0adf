"""The host's content-addressed image cache, with STORM's download progress and speed.

Files live at ``<cache>/<sha256>``; a file is hashed while it streams in (constant memory)
and renamed into place only when complete, so a half-fetched file is never used.

The agent runs as root, so what it copies in is its caller's to read back (a guest boots it
and prints it): it copies only from the folders of ``FetchConfig.roots`` and fetches only
URLs the fetch policy allows (``lamina.fetchpolicy``), whoever asks. Cached files are mode
0600 in a 0700 folder: no other user of the host reads them.

The files of the image repository come as ``blob:<sha256>`` with a capability: fetched from
exactly the manager this agent enrolled with (``FetchConfig.manager_url``, its origin and
nothing else, so no private address is opened up in general), over TLS checked against
Lamina's CA when it is https, into ``.blob-<sha256>``: a download that breaks off resumes
from there with ``Range`` (in the same call, and in the next one), and the whole is checked
against the digest before it becomes the entry; a mismatch leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lamina.errors import (
    BackendUnavailable,
    Conflict,
    Forbidden,
    InvalidRequest,
    InvalidState,
    LaminaError,
    NotFound,
)
from lamina.fetchpolicy import (
    FetchPolicy,
    check_url,
    http_client,
    local_path,
    open_path,
    unavailable,
)
from lamina.remote_errors import raise_for_error
from lamina.wire.protocol import BLOB_SCHEME, CacheEntry, DownloadStatus, Transfer

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700
#: Tries of one blob download (each resuming where the last broke off), and the pause after
#: a broken one.
BLOB_ATTEMPTS = 4
BLOB_RETRY_SECONDS = 1.0
#: A broken-off blob download not resumed for this long is dropped when the agent starts.
STALE_PARTIAL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class FetchConfig:
    """What the cache may fetch: files under ``roots`` (resolved), and URLs under the
    fetch policy."""

    roots: tuple[Path, ...] = ()
    allow_private: bool = False
    max_redirects: int = 5
    timeout: float = 30.0
    #: The manager this agent enrolled with (``blob:`` sources come from there only).
    manager_url: str | None = None
    #: Lamina's CA (the agent's ``tls/ca.pem``), trusted beside the system's for an https
    #: manager.
    ca_file: Path | None = None


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
    def __init__(
        self, root: Path, tracker: DownloadTracker, fetch: FetchConfig | None = None
    ) -> None:
        self.root = root
        self.tracker = tracker
        self.fetch = fetch or FetchConfig()
        root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        self._index_path = root / "sources.json"
        self._lock = threading.Lock()
        self._blob_locks: dict[str, threading.Lock] = {}
        self._fix_modes()
        self._drop_stale_partials()

    def _fix_modes(self) -> None:
        """Entries cached by an older agent were world-readable: no longer."""
        os.chmod(self.root, DIR_MODE)
        for path in self.root.iterdir():
            if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o077:
                os.chmod(path, FILE_MODE)
                log.info("cache entry %s made private (mode 0600)", path.name)

    def _drop_stale_partials(self) -> None:
        """What a download left: a file copy's (it never resumes) and blobs' untouched for a
        day (the step that wanted them has long given up)."""
        now = time.time()
        for path in self.root.iterdir():
            stale = path.name.startswith(".partial-") or (
                path.name.startswith(".blob-")
                and now - path.stat().st_mtime > STALE_PARTIAL_SECONDS
            )
            if stale and path.is_file():
                path.unlink(missing_ok=True)
                log.info("removed %s, left by a download that did not finish", path.name)

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

    def install(
        self, source: str, sha256: str | None = None, capability: str | None = None
    ) -> CacheEntry:
        """Fetch ``source`` into the cache unless it is there already, and return it.

        ``source``: ``blob:<sha256>``, the repository's file fetched from the manager with
        ``capability`` (see the module's doc); an absolute path or ``file://`` URL inside
        ``FetchConfig.roots`` (``PathForbidden``, 403, otherwise, whether the file exists or
        not), or an ``http(s)://`` URL (``LocationUnavailable``, 400, when refused by the
        fetch policy or when the fetch fails for any reason). The source is checked before
        anything cached is looked at."""
        if source.startswith(BLOB_SCHEME):
            return self._install_blob(source, sha256, capability)
        path = local_path(source)
        if path is not None:
            fd, info = open_path(path, self.fetch.roots)
            with os.fdopen(fd, "rb") as f:
                key = f"{info.st_size}:{info.st_mtime_ns}"
                cached = self._cached(source, sha256, key)
                if cached is not None:
                    return cached
                chunks = iter(lambda: f.read(CHUNK), b"")
                entry = self._store(source, info.st_size, chunks, sha256)
            self._remember(source, entry.sha256, key)
            return entry
        if urllib.parse.urlsplit(source).scheme.lower() not in ("http", "https"):
            raise InvalidRequest(
                "cannot fetch that source: use an absolute path or a URL (file://, http(s)://)"
            )
        url = check_url(source)
        cached = self._cached(source, sha256, None)
        if cached is not None:
            return cached
        entry = self._fetch_http(url, sha256)
        self._remember(source, entry.sha256, None)
        return entry

    # -- blobs from the manager ------------------------------------------------------------

    def _install_blob(self, source: str, sha256: str | None, capability: str | None) -> CacheEntry:
        digest = source[len(BLOB_SCHEME) :]
        _check_digest(digest)
        if sha256 not in (None, digest):
            raise InvalidRequest(f"{source} names another digest than {sha256}")
        if not capability:
            raise InvalidRequest(f"{source} comes with a capability from the manager")
        if (self.root / digest).is_file():
            return self.check(digest)
        if not self.fetch.manager_url:
            raise InvalidState(
                "this agent does not know its manager's URL: start it once with --manager URL"
            )
        url = f"{self.fetch.manager_url.rstrip('/')}/blobs/{digest}"
        with self._blob_lock(digest):
            if (self.root / digest).is_file():  # another call fetched it meanwhile
                return self.check(digest)
            for attempt in range(1, BLOB_ATTEMPTS + 1):
                try:
                    return self._download_blob(url, source, digest, capability)
                except httpx.TransportError as exc:
                    log.warning(
                        "fetching %s broke off (%s: %s), try %d of %d",
                        url, type(exc).__name__, exc, attempt, BLOB_ATTEMPTS,
                    )  # fmt: skip
                    if attempt == BLOB_ATTEMPTS:
                        raise BackendUnavailable(
                            f"cannot fetch blob {digest} from the manager at "
                            f"{self.fetch.manager_url}: {type(exc).__name__}: {exc}"
                        ) from None
                    time.sleep(BLOB_RETRY_SECONDS)
        raise AssertionError("unreachable")

    def _blob_lock(self, digest: str) -> threading.Lock:
        with self._lock:
            return self._blob_locks.setdefault(digest, threading.Lock())

    def _manager_tls(self) -> ssl.SSLContext | bool:
        if not (self.fetch.manager_url or "").startswith("https:"):
            return True
        context = ssl.create_default_context()
        if self.fetch.ca_file is not None and self.fetch.ca_file.is_file():
            context.load_verify_locations(cafile=str(self.fetch.ca_file))
        return context

    def partial_path(self, digest: str) -> Path:
        """Where a blob download in progress (or broken off) keeps what it has."""
        _check_digest(digest)
        return self.root / f".blob-{digest}"

    def _download_blob(self, url: str, source: str, digest: str, capability: str) -> CacheEntry:
        """One try: ask for what the partial file lacks, append it, and once whole check
        the digest and move it into place."""
        partial = self.partial_path(digest)
        have = partial.stat().st_size if partial.is_file() else 0
        headers = {"Authorization": f"Bearer {capability}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        timeout = httpx.Timeout(self.fetch.timeout, connect=10.0)
        with (
            httpx.Client(
                verify=self._manager_tls(), trust_env=False, timeout=timeout,
                follow_redirects=False,
            ) as client,
            client.stream("GET", url, headers=headers) as response,
        ):  # fmt: skip
            if response.status_code == 416 and have:
                # The partial file is whole already (or longer than the blob): check it.
                return self._finish_blob(partial, digest)
            if response.status_code not in (200, 206):
                response.read()
                _refused(response, digest)
            start = _range_start(response) if response.status_code == 206 else 0
            if start not in (0, have):
                raise BackendUnavailable(f"the manager answered a range from {start}, not {have}")
            # Hashed as it streams in; on a resume, what the partial file holds first.
            hasher = _hash_file(partial) if start else hashlib.sha256()
            length = int(response.headers.get("content-length", "0") or 0)
            transfer = self.tracker.begin(source, start + length)
            transfer.done = start
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                flags |= os.O_APPEND if start else os.O_TRUNC
                with os.fdopen(os.open(partial, flags, FILE_MODE), "wb") as out:
                    # As the connection gives them: asking httpx for bigger pieces costs
                    # a copy of every byte (3.2 s instead of 1.2 s for 1 GiB on loopback).
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        hasher.update(chunk)
                        transfer.done += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                self.tracker.end(transfer)
        return self._finish_blob(partial, digest, hasher)

    def _finish_blob(
        self, partial: Path, digest: str, hasher: hashlib._Hash | None = None
    ) -> CacheEntry:
        """Move a whole partial file into place if its digest is ``digest``; else remove it
        and raise ``Conflict``."""
        got = (hasher or _hash_file(partial)).hexdigest()
        if got != digest:
            partial.unlink(missing_ok=True)
            raise Conflict(
                f"blob {digest} arrived with digest {got}: nothing cached",
                source=f"{BLOB_SCHEME}{digest}",
            )
        os.replace(partial, self.root / digest)
        return self.check(digest)

    def _cached(self, source: str, sha256: str | None, key: str | None) -> CacheEntry | None:
        if sha256 and (self.root / sha256).is_file():
            return self.check(sha256)
        known = self._known(source, key)
        if known and (self.root / known).is_file() and not sha256:
            return self.check(known)
        return None

    def _fetch_http(self, url: httpx.URL, expected: str | None) -> CacheEntry:
        policy = FetchPolicy(allow_private=self.fetch.allow_private)
        source = str(url)
        try:
            with (
                http_client(
                    policy, timeout=self.fetch.timeout, max_redirects=self.fetch.max_redirects
                ) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise unavailable(url, f"answered {response.status_code}")
                length = response.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
                return self._store(source, total, response.iter_bytes(CHUNK), expected)
        except httpx.HTTPError as exc:
            raise unavailable(url, f"{type(exc).__name__}: {exc}") from None

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
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(tmp, flags, FILE_MODE), "wb") as out:
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
        os.chmod(path, FILE_MODE)
        final = self.root / digest.hexdigest()
        os.replace(path, final)
        return self.check(final.name)

    # A source's last digest, so a local file or URL already fetched is not fetched again.
    def _known(self, source: str, key: str | None) -> str | None:
        with self._lock:
            index = self._read_index()
        record = index.get(source)
        if record and record.get("key") == key:
            return str(record["sha256"])
        return None

    def _remember(self, source: str, digest: str, key: str | None) -> None:
        with self._lock:
            index = self._read_index()
            index[source] = {"sha256": digest, "key": key}
            tmp = self._index_path.with_suffix(".tmp")
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(tmp, flags, FILE_MODE), "w") as out:
                out.write(json.dumps(index))
            os.replace(tmp, self._index_path)

    def _read_index(self) -> dict[str, dict[str, object]]:
        try:
            return dict(json.loads(self._index_path.read_text()))
        except (OSError, ValueError):
            return {}


def _hash_file(path: Path) -> hashlib._Hash:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            hasher.update(chunk)
    return hasher


def _range_start(response: httpx.Response) -> int:
    """The first byte of a 206's ``Content-Range: bytes START-END/SIZE``."""
    value = response.headers.get("content-range", "")
    unit, _, span = value.partition(" ")
    start = span.partition("-")[0]
    if unit != "bytes" or not start.isdigit():
        raise BackendUnavailable(f"the manager answered a bad Content-Range: {value!r}")
    return int(start)


def _refused(response: httpx.Response, digest: str) -> None:
    """Raise for the manager's refusal of a blob, naming what it said."""
    try:
        raise_for_error(response)
    except LaminaError as exc:
        kind = NotFound if exc.status == 404 else Forbidden if exc.status in (401, 403) else None
        if kind is not None:
            raise kind(f"the manager refused blob {digest}: {exc.message}") from None
        raise BackendUnavailable(f"the manager failed blob {digest}: {exc.message}") from None
    raise BackendUnavailable(f"the manager answered {response.status_code} for blob {digest}")


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidRequest(f"{digest!r} is not a SHA-256 hex digest")
