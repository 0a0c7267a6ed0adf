"""The ``http`` store: read-only references to image files on somebody else's web server.

Registering an image by ``location`` (VISOR listings 4.3/4.4) asks the server about the URL:
redirects are followed one by one, at most ``max_redirects`` of them, and the headers of the
true location give the size (``Content-Length``, or the total of a ``Content-Range``) and, when
the server tells one, an MD5 checksum (``Content-MD5``, or a strong ``ETag`` that is exactly 32
hex digits). The store keeps nothing: downloads stream through from the server, with ``Range``
for partial reads, and ``delete`` leaves the remote file alone. Writing is refused with a 400.

Decisions worth knowing:

* **A size is required.** A server that tells neither ``Content-Length`` (to ``HEAD``, or to a
  ``GET`` with ``Range: bytes=0-0``) nor a ``Content-Range`` total is refused at registration
  with a 400 saying so: an image of unknown size cannot be checked, accounted or resumed.
* **Range fallback.** A server that answers a ranged ``GET`` with ``200`` and the whole file is
  tolerated: the store skips the first ``offset`` bytes itself and stops after ``length``. This
  is correct but reads the skipped prefix over the network; ``capabilities.ranged`` stays True
  because the result is the same.
* **Checksums are hints.** ``Content-MD5`` is the MD5 of the body by definition (so it is only
  read from a full ``200`` answer, never from a ``206``). An md5-looking ``ETag`` is what S3 and
  many servers send, but some (S3 with KMS encryption) use 32-hex ETags that are not MD5s; weak
  (``W/``) and multipart (``...-N``) ETags are ignored, and so are Apache's ``inode-size-mtime``
  ETags that VISOR stored as checksums. Callers that compute the MD5 while streaming should
  trust their own figure.
* **HEAD refused.** ``405``, ``501`` and ``403`` to ``HEAD`` (S3 pre-signed URLs are signed for
  ``GET`` only and answer ``HEAD`` with 403) are retried as ``GET`` with ``Range: bytes=0-0``.
* **Answers.** At registration, 4xx (after redirects) is the 400 "no image file found at the
  given location" of VISOR's table 4.3; 5xx and unreachable servers are 503
  (``BackendUnavailable``), since the location may be fine and the server down. For a download,
  404/410 is ``NotFound``.
* **Credentials and logs.** URLs with ``user:password@`` are refused (also as a redirect target):
  they would be stored in the image's metadata and shown to everyone who can read it. Logs and
  error messages show URLs without their query string, which often carries a token (pre-signed
  URLs); the stored location keeps it, since the download needs it.

Security (SSRF): the manager fetches whatever URL a user registers, from inside the network it
runs in. Every connection (the first and each one after a redirect) goes through the fetch
policy of ``lamina.fetchpolicy``: checked after DNS resolution and pinned to the checked address,
refusing loopback, private and other non-global addresses unless ``allow_private``
(``images.http_allow_private``, off by default) and link-local and metadata-service addresses
always. And whatever goes wrong once the URL is well formed (refused, unresolvable,
unreachable, an error status, no size, too many redirects), ``probe`` and ``open`` raise the
same ``LocationUnavailable`` ("the location could not be fetched", 400); the reason goes to
the log only, so the answers do not map which ports answer behind the manager.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterable, Iterator

import httpx

from lamina import __version__
from lamina.errors import (
    BackendUnavailable,
    InvalidRequest,
    LaminaError,
    LocationUnavailable,
    NotFound,
)
from lamina.fetchpolicy import FetchPolicy, check_url, http_client, redact, unavailable
from lamina.stores.base import CHUNK, Capabilities, ImageStore, StoredObject

log = logging.getLogger(__name__)

REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Answers to HEAD that mean "ask with GET instead".
HEAD_REFUSED = frozenset({403, 405, 501})
GONE = frozenset({404, 410})
MD5_HEX = re.compile(r"^[0-9a-fA-F]{32}$")
CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


class NoImageFile(InvalidRequest):
    """VISOR's 400 "No image file found at the given location"."""

    def __init__(self, url: httpx.URL, status: int) -> None:
        super().__init__(
            f"no image file found at the given location ({redact(url)} answered {status})",
            status=status,
        )


class HttpImageStore(ImageStore):
    """Image files left on web servers, referenced by ``http(s)://`` location."""

    name = "http"
    capabilities = Capabilities(writable=False, ranged=True)

    def __init__(
        self, max_redirects: int = 5, timeout: float = 30.0, allow_private: bool = False
    ) -> None:
        if max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        headers = {
            "User-Agent": f"lamina/{__version__} (image store)",
            # The bytes as stored, so that Content-Length is the size of what we stream.
            "Accept-Encoding": "identity",
        }
        # Redirects are followed by ``_follow``, one checked hop at a time.
        self._client = http_client(
            FetchPolicy(allow_private=allow_private),
            headers=headers,
            timeout=timeout,
            follow_redirects=False,
        )

    # -- the interface ---------------------------------------------------------------------

    def save(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        """Always raises ``InvalidRequest``: the http store is read-only."""
        raise InvalidRequest("the http store is read-only", store=self.name)

    def probe(self, location: str) -> StoredObject:
        """Follow ``location``'s redirects and read the true location's size and checksum.

        Raises ``InvalidRequest`` for a location that is not a plain http(s) URL or carries
        credentials; ``LocationUnavailable`` (400, one message) for anything else: an
        address the fetch policy refuses, a server that cannot be reached or answers with an
        error, too many redirects or a loop, a redirect to an unsupported location, no size."""
        start = _check(location)
        try:
            return self._probe(start)
        except (LaminaError, httpx.HTTPError) as exc:
            raise unavailable(start, getattr(exc, "message", exc)) from None

    def _probe(self, start: httpx.URL) -> StoredObject:
        url, response = self._follow(start, self._ask_head)
        try:
            if response.status_code == 416:
                size = _range_total(response)  # an empty file answers 416 to bytes=0-0
                if size != 0:
                    raise NoImageFile(url, response.status_code)
            else:
                self._raise_for_probe(url, response)
                size = _size(response)
            checksum = _checksum(response)
        finally:
            response.close()
        if size is None:
            # HEAD may omit the length of a dynamic answer; a one-byte GET states the total.
            response = self._ask_range(url)
            try:
                if response.is_success:
                    size = _size(response)
                    checksum = checksum or _checksum(response)
            finally:
                response.close()
        if size is None:
            raise InvalidRequest(
                f"the server at {_host(url)} does not tell the size of {redact(url)} "
                "(no Content-Length or Content-Range); serve the file with a known length"
            )
        log.info("http location %s: %d bytes, md5 %s", redact(url), size, checksum or "unknown")
        return StoredObject(str(url), size, checksum)

    def open(self, location: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream ``length`` bytes (to the end if None) from ``offset`` of the remote file,
        in pieces of at most ``CHUNK`` bytes.

        The request is made before this returns, so a missing file, an unreachable server or
        a refused address raises ``LocationUnavailable`` here; errors while streaming raise
        ``BackendUnavailable`` from the iterator. Close the iterator to stop early."""
        if offset < 0 or (length is not None and length < 0):
            raise InvalidRequest(f"bad range: offset {offset}, length {length}")
        start = _check(location)
        if length == 0:
            return iter(())
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"

        try:
            return self._open(start, offset, length, headers)
        except (LaminaError, httpx.HTTPError) as exc:
            raise unavailable(start, getattr(exc, "message", exc)) from None

    def _open(
        self, start: httpx.URL, offset: int, length: int | None, headers: dict[str, str]
    ) -> Iterator[bytes]:
        def ask(url: httpx.URL) -> httpx.Response:
            return self._send("GET", url, headers)

        url, response = self._follow(start, ask)
        status = response.status_code
        skip = 0
        if status == 206:
            first = _range_start(response)
            if first != offset:
                response.close()
                raise BackendUnavailable(
                    f"the server at {_host(url)} answered bytes from {first} when asked for "
                    f"bytes from {offset} of {redact(url)}"
                )
        elif status == 200:
            if offset:
                log.debug("%s ignores Range; skipping %d bytes client-side", _host(url), offset)
            skip = offset
        else:
            response.close()
            if status in GONE:
                raise NotFound(f"image file {redact(url)} is missing from its web server")
            if status == 416:  # offset at or past the end: nothing, as from the file store
                return iter(())
            raise BackendUnavailable(
                f"the server at {_host(url)} answered {status} to the download of {redact(url)}"
            )
        body = _stream(response, url, skip, length)
        next(body)  # start it, so that closing or dropping the iterator closes the response
        return body

    def delete(self, location: str) -> None:
        """Does nothing: the file belongs to its web server, not to Lamina. Only checks that
        ``location`` is an http(s) URL (``InvalidRequest`` otherwise)."""
        _check(location)
        log.debug("not deleting %s: the http store only references files", redact(location))

    def exists(self, location: str) -> bool:
        """Whether the server has a file there (after redirects)."""
        try:
            self.probe(location)
        except LocationUnavailable:
            return False
        return True

    def size(self, location: str) -> int:
        """The remote file's size; ``NotFound`` when the server has no file there."""
        try:
            return self.probe(location).size
        except LocationUnavailable as exc:
            raise NotFound(exc.message) from None

    def close(self) -> None:
        self._client.close()

    # -- requests --------------------------------------------------------------------------

    def _send(self, method: str, url: httpx.URL, headers: dict[str, str]) -> httpx.Response:
        request = self._client.build_request(method, url, headers=headers)
        try:
            return self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(
                f"the server at {_host(url)} did not answer in time ({type(exc).__name__})",
                host=_host(url),
            ) from None
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"cannot reach the server at {_host(url)}: {exc}", host=_host(url)
            ) from None

    def _ask_range(self, url: httpx.URL) -> httpx.Response:
        return self._send("GET", url, {"Range": "bytes=0-0"})

    def _ask_head(self, url: httpx.URL) -> httpx.Response:
        response = self._send("HEAD", url, {})
        if response.status_code in HEAD_REFUSED:
            response.close()
            log.debug("%s refuses HEAD (%d); asking with GET", _host(url), response.status_code)
            return self._ask_range(url)
        return response

    def _follow(
        self, url: httpx.URL, ask: Callable[[httpx.URL], httpx.Response]
    ) -> tuple[httpx.URL, httpx.Response]:
        """Ask ``url`` and every redirect target in turn; return the first other answer
        (open, for the caller to read or close) and where it came from."""
        first, seen = url, {url}
        for hop in range(self.max_redirects + 1):
            response = ask(url)
            target = response.headers.get("location")
            if response.status_code not in REDIRECTS or not target:
                return url, response
            response.close()
            if hop == self.max_redirects:
                raise InvalidRequest(
                    f"{redact(first)} redirects more than {self.max_redirects} "
                    f"times (the limit is {self.max_redirects})"
                )
            try:
                following = url.join(target)
            except httpx.InvalidURL:
                raise InvalidRequest(f"{_host(url)} redirects to an invalid URL") from None
            following = _check(str(following))
            if following in seen:
                raise InvalidRequest(
                    f"{redact(url)} redirects in a loop (at most {self.max_redirects} "
                    "redirects are followed)"
                )
            log.debug("%s redirects to %s", redact(url), redact(following))
            seen.add(following)
            url = following
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for_probe(self, url: httpx.URL, response: httpx.Response) -> None:
        status = response.status_code
        if response.is_success:
            return
        if status >= 500:
            raise BackendUnavailable(
                f"the server at {_host(url)} answered {status} for {redact(url)}", host=_host(url)
            )
        raise NoImageFile(url, status)


def _stream(
    response: httpx.Response, url: httpx.URL, skip: int, length: int | None
) -> Iterator[bytes]:
    """The body of ``response`` without its first ``skip`` bytes, at most ``length`` bytes.
    Yields one empty piece first, which ``open`` consumes to start the generator."""
    left = length
    try:
        yield b""
        for piece in response.iter_raw(CHUNK):
            if skip:
                if len(piece) <= skip:
                    skip -= len(piece)
                    continue
                piece, skip = piece[skip:], 0
            if left is not None:
                piece = piece[:left]
                left -= len(piece)
            if piece:
                yield piece
            if left == 0:
                return
    except httpx.TransportError as exc:
        raise BackendUnavailable(
            f"the download of {redact(url)} from {_host(url)} broke off: {exc}", host=_host(url)
        ) from None
    finally:
        response.close()


# -- locations -------------------------------------------------------------------------------


def _check(location: str) -> httpx.URL:
    """``location`` as a URL, if it is a plain http(s) URL without credentials."""
    try:
        return check_url(location)
    except InvalidRequest as exc:
        if "credentials" in exc.message:
            raise InvalidRequest(
                f"the location {redact(location)} carries credentials (user:password@); they "
                "would be stored with the image for everyone to read: use a pre-signed or "
                "public URL"
            ) from None
        raise InvalidRequest(
            f"unsupported location {redact(location)!r}: the http store takes http:// and "
            "https:// URLs"
        ) from None


def _host(url: httpx.URL) -> str:
    return f"{url.host}:{url.port}" if url.port else url.host


# -- headers ---------------------------------------------------------------------------------


def _size(response: httpx.Response) -> int | None:
    if response.status_code == 206:
        return _range_total(response)
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _range_total(response: httpx.Response) -> int | None:
    match = CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
    if match is None or match.group(3) == "*":
        return None
    return int(match.group(3))


def _range_start(response: httpx.Response) -> int | None:
    match = CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
    return int(match.group(1)) if match and match.group(1) is not None else None


def _checksum(response: httpx.Response) -> str | None:
    """An MD5 (hex) the headers tell, or None."""
    content_md5 = response.headers.get("content-md5")
    if content_md5 and response.status_code == 200:  # of the body sent, so not of a 206
        try:
            digest = base64.b64decode(content_md5.strip(), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) == 16:
            return digest.hex()
    etag = str(response.headers.get("etag", "")).strip()
    if etag and not etag.startswith("W/"):
        etag = etag.strip('"')
        if MD5_HEX.match(etag):
            return etag.lower()
    return None
