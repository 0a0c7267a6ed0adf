"""How a host gets the files its guests boot: "make this host hold these files".

Every kernel, initrd, disk image, layer (and, later, checkpoint) of the image repository
reaches a host through the manager's blob route (``GET /blobs/{sha256}``), never by a path
into the manager's folders or a URL of a store: the host's agent asks the manager it
enrolled with, which answers from whichever store holds an available image of that digest
(file, S3, http). A host may fetch a blob only with a **capability** the manager minted when
it asked that host to install that file:

    v1.<host id>.<expiry, seconds since the epoch>.<hex HMAC-SHA256>

the MAC over ``host id \\n sha256 \\n expiry`` under a key derived from the managers'
``secret.key`` (``SecretBox.derive``), so any manager sharing the database can mint or check
one and nothing is stored. It is checked (pure computation, constant time) before the
route reads anything else: the digest in the path must be the one signed, the expiry in the
future, the MAC right, and only then is the host looked up (it must still be enrolled). A
member's keys, a session, a capability for another digest or another host, an expired or
forged one: 403, nothing read from a store.

Capabilities are minted only here (``install_files``), for the files of an instance, which
were checked against its creator's access when it was created (``lamina.compute.boot``).

What instances record for an image is its id and digest (``image:<id>@sha256:<digest>``,
``lamina.compute.boot.image_ref``). Older rows recorded the image's store location
(``file://`` under the manager's image root, or an http URL); ``host_source`` still
recognises those as the repository's by location (and, for layers, by digest), so
deployments made before the upgrade keep booting. Administrators' host paths under
``compute.boot_paths`` and users' http(s) URLs go to the agent as they are: it checks them
against its ``fetch_roots`` and the fetch policy.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.compute.boot import parse_image_ref
from lamina.compute.models import Host
from lamina.errors import (
    AuthenticationFailed,
    InvalidRequest,
    InvalidState,
    LaminaError,
    NotFound,
)
from lamina.images.models import Image
from lamina.images.transfer import parse_range
from lamina.stores import pick
from lamina.stores.base import ImageStore
from lamina.wire.protocol import BLOB_SCHEME, CacheEntry

if TYPE_CHECKING:
    from lamina.identity.secretbox import SecretBox
    from lamina.services import Services
    from lamina.wire.client import AgentClient

log = logging.getLogger(__name__)
PURPOSE = "lamina blob capability v1"
VERSION = "v1"
#: How long a capability is good for. It is checked when a request starts: a download
#: that began in time runs to its end; a resume after it expired needs a new one (the
#: step asks the agent again, which resumes from its partial file).
CAPABILITY_SECONDS = 15 * 60
PROGRESS_INTERVAL = 0.5
DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: Host statuses whose agents may fetch (a pending host has no certificate yet).
FETCHING = ("up", "down", "disabled")


# -- capabilities ---------------------------------------------------------------------------


def _mac(box: SecretBox, host_id: str, digest: str, expires: int) -> str:
    message = f"{host_id}\n{digest}\n{expires}".encode()
    return hmac.new(box.derive(PURPOSE), message, hashlib.sha256).hexdigest()


def mint(box: SecretBox, host_id: str, digest: str, seconds: int = CAPABILITY_SECONDS) -> str:
    """A capability for host ``host_id`` to fetch blob ``digest`` for ``seconds``."""
    expires = int(time.time()) + seconds
    return f"{VERSION}.{host_id}.{expires}.{_mac(box, host_id, digest, expires)}"


def check_capability(
    box: SecretBox, capability: str | None, digest: str, now: float | None = None
) -> str:
    """The host a capability was minted for, if it is good for ``digest`` now.
    ``AuthenticationFailed`` (403) otherwise: ``auth_missing`` without one,
    ``auth_bad_token`` for one malformed, forged, for another digest or host, or expired."""
    if not capability:
        raise AuthenticationFailed(
            "auth_missing", "blobs are for hosts: send the capability the manager gave"
        )
    parts = capability.strip().split(".")
    if len(parts) != 4 or parts[0] != VERSION or not parts[2].isdigit() or len(parts[3]) != 64:
        raise AuthenticationFailed("auth_bad_token", "the blob capability is malformed")
    _, host_id, expires_text, mac = parts
    expires = int(expires_text)
    good = hmac.compare_digest(_mac(box, host_id, digest, expires), mac)
    if not good:
        raise AuthenticationFailed("auth_bad_token", "the blob capability is not valid")
    if expires < (time.time() if now is None else now):
        raise AuthenticationFailed("auth_bad_token", "the blob capability has expired")
    return host_id


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


# -- the blob route's use case -----------------------------------------------------------------


@dataclass
class Blob:
    """Bytes ``offset`` to ``offset + length`` of a blob of ``size`` bytes, from ``store``."""

    digest: str
    size: int
    store: ImageStore
    location: str
    offset: int
    length: int
    partial: bool

    def open_local(self) -> BinaryIO | None:
        return self.store.open_local(self.location)

    def chunks(self) -> Iterator[bytes]:
        return self.store.open(self.location, self.offset, self.length)


def serve_blob(svc: Services, capability: str | None, digest: str, range_: str | None) -> Blob:
    """The blob a host asks for with ``capability`` (checked first: see the module's doc),
    whole or the byte range ``range_`` (416 outside it). NotFound when no available image
    has that digest (any image of that digest has the same bytes)."""
    host_id = check_capability(svc.box, capability, digest)
    if not DIGEST.match(digest):
        raise InvalidRequest("a blob is named by its SHA-256 (64 lower-case hex digits)")
    with svc.db.read() as s:
        host = s.get(Host, host_id)
        if host is None or host.status not in FETCHING:
            raise AuthenticationFailed("auth_bad_token", "the blob capability's host is gone")
        image = _image_with(s, digest)
        if image is None or image.location is None or image.size is None:
            raise NotFound(f"no available image has digest {digest}", sha256=digest)
        size, store_name, location = image.size, image.store, image.location
    span = parse_range(range_, size)
    offset, length = span or (0, size)
    return Blob(
        digest, size, pick(svc.stores, store_name), location, offset, length, span is not None
    )


def _image_with(session: Session, digest: str) -> Image | None:
    query = select(Image).where(
        Image.sha256 == digest, Image.status == "available", Image.location.is_not(None)
    )
    return session.scalars(query.order_by(Image.created_at).limit(1)).first()


# -- what the host is asked to install ----------------------------------------------------------


@dataclass(frozen=True)
class HostFile:
    """One file a host must hold: ``key`` names it in the job's state (``kernel``,
    ``layer0``...), ``source`` is what the instance recorded, ``sha256`` its digest if known."""

    key: str
    source: str
    sha256: str | None = None


def host_source(
    session: Session, box: SecretBox, host_id: str, source: str, digest: str | None
) -> tuple[str, str | None, str | None]:
    """What to ask host ``host_id``'s agent for, for a recorded ``source``:
    ``(source, sha256, capability)``. An image of the repository (by reference, or an older
    row's store location) becomes ``blob:<sha256>`` with a capability; anything else (an
    administrator's host path, a user's URL) goes as it is. InvalidState when the image
    has no available file any more."""
    ref = parse_image_ref(source)
    if ref is not None:
        image_id, digest = ref
        if _image_with(session, digest) is None:
            raise InvalidState(
                f"image {image_id} has no available file any more (sha256 {digest})",
                image=image_id,
            )
        return f"{BLOB_SCHEME}{digest}", digest, mint(box, host_id, digest)
    # A row written before instances recorded image references: its store location.
    legacy = session.scalars(
        select(Image.sha256).where(Image.location == source, Image.status == "available")
    ).first()
    if legacy is None and digest is not None and source.lower().startswith("file:"):
        legacy = digest if _image_with(session, digest) is not None else None
    if legacy is not None and (digest is None or legacy == digest):
        return f"{BLOB_SCHEME}{legacy}", legacy, mint(box, host_id, legacy)
    return source, digest, None


def install_files(
    svc: Services,
    host: Host,
    agent: AgentClient,
    files: Sequence[HostFile],
    report: Callable[..., None] | None = None,
) -> dict[str, CacheEntry]:
    """Make ``host`` hold ``files`` in its cache (a no-op for those it holds), one after the
    other, through the manager's blob route for the repository's; answers each file's cache
    entry by its key. ``report(fraction=, bytes_done=, bytes_total=, rate=)`` gets the
    agent's byte counts while a file downloads (fractions of 0..1 over all the files).

    This is the one way files reach a host: instance creation, a substrate refresh, a
    migration's destination and a checkpoint's restore all call it."""
    entries: dict[str, CacheEntry] = {}
    with ThreadPoolExecutor(1) as pool:
        for i, file in enumerate(files):
            with svc.db.read() as s:
                source, digest, capability = host_source(
                    s, svc.box, host.id, file.source, file.sha256
                )
            pending = pool.submit(agent.cache_install, source, digest, capability)
            while True:
                try:
                    entries[file.key] = pending.result(timeout=PROGRESS_INTERVAL)
                    break
                except FuturesTimeout:
                    if report is not None:
                        _report_transfer(report, agent, source, i, len(files))
            if report is not None:
                report(fraction=(i + 1) / len(files))
    return entries


def _report_transfer(
    report: Callable[..., None], agent: AgentClient, source: str, i: int, n: int
) -> None:
    try:
        transfers = agent.downloads().transfers
    except LaminaError:
        return  # progress is best effort; the download itself decides the step
    for t in transfers:
        if t.source == source:
            part = t.bytes_done / t.bytes_total if t.bytes_total else 0.0
            report(
                fraction=(i + part) / n,
                bytes_done=t.bytes_done,
                bytes_total=t.bytes_total,
                rate=t.rate,
            )
