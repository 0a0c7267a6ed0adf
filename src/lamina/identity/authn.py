"""Establishing who sent a request: signatures (Lamina's and VISOR's) and web sessions.

Every failure is an ``AuthenticationFailed`` (403) whose code and message say what was wrong
without revealing a secret, or whether an access key exists: ``auth_missing``,
``auth_malformed``, ``auth_bad_signature`` (an unknown access key, a user without an active
key and a wrong signature answer alike, after the same work), ``auth_clock_skew``,
``auth_bad_body``, ``auth_visor_refused``, ``auth_session``, ``csrf_failed``. Nothing a client
sent is echoed beyond a few characters. Signatures are compared in constant time.

A signature is checked from the headers alone (the body's hash is one of them), before any
byte of the body is read: the caller then checks the body against the declared hash.
"""

from __future__ import annotations

import functools
import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from sqlalchemy import select

from lamina.db import Database
from lamina.errors import AuthenticationFailed, excerpt
from lamina.identity import signing
from lamina.identity.models import User
from lamina.identity.principal import Principal
from lamina.identity.secretbox import SecretBox
from lamina.identity.users import ACCESS_KEY, active_secrets

#: Longer Authorization values are refused before any lookup ("LAMINA " + a 64-character
#: access key + ":" + 64 hex digits is 136).
MAX_AUTHORIZATION = 512
#: Hex SHA-256 of a body, as X-Lamina-Content-SHA256 carries it.
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: What an unknown access key is checked against, so that it costs what a known one does.
_DUMMY_SECRET = "lamina-no-such-key-" + "0" * 21
BAD_SIGNATURE = (
    "the signature does not match: check the access key, the secret key and how the "
    "canonical request is built"
)
#: Image listings take their filters as a query; VISOR signs no query but on these.
VISOR_QUERY_PATHS = ("/images", "/images/detail")


@dataclass(frozen=True)
class Credentials:
    principal: Principal
    secrets: tuple[str, ...]


class KeyCache:
    """Users' active secrets, kept for a few seconds so a signed request costs no database
    round trip. Changes made through this manager take effect at once (``forget``); other
    managers see them within ``ttl`` seconds.

    An unknown key is remembered too, for as long, or a second request with it would be
    slower than one with a known key and tell that the key exists; but only keys that could
    exist (``ACCESS_KEY``: 64 characters at most) and at most ``MAX_MISSES`` of them, the
    oldest forgotten first, so made-up keys cannot fill the memory (under 1 MiB)."""

    MAX_MISSES = 4096

    def __init__(self, db: Database, box: SecretBox, ttl: float) -> None:
        self.db, self.box, self.ttl = db, box, ttl
        self._entries: dict[str, tuple[float, Credentials]] = {}
        self._misses: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, access_key: str) -> Credentials | None:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(access_key)
            missed = self._misses.get(access_key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        if missed is not None and now - missed < self.ttl:
            return None
        with self.db.read() as s:
            user = s.scalar(select(User).where(User.access_key == access_key))
            if user is None:
                self._missed(access_key, now)
                return None
            creds = Credentials(
                Principal(user.id, user.access_key, user.role),
                tuple(active_secrets(s, self.box, user.id)),
            )
        if self.ttl > 0:
            with self._lock:
                if len(self._entries) > 10_000:
                    self._entries.clear()
                self._entries[access_key] = (now, creds)
        return creds

    def _missed(self, access_key: str, now: float) -> None:
        if self.ttl <= 0 or not ACCESS_KEY.match(access_key):
            return
        with self._lock:
            self._entries.pop(access_key, None)
            self._misses[access_key] = now
            self._misses.move_to_end(access_key)
            while len(self._misses) > self.MAX_MISSES:
                self._misses.popitem(last=False)

    def fresh(self, access_key: str) -> bool:
        """True when ``get`` would answer from memory, without the database."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(access_key)
            missed = self._misses.get(access_key)
        when = hit[0] if hit is not None else missed
        return when is not None and now - when < self.ttl

    def forget(self) -> None:
        with self._lock:
            self._entries.clear()
            self._misses.clear()


@dataclass(frozen=True)
class Claim:
    """A parsed Authorization header: the scheme, the access key it names, the signature."""

    scheme: str
    access_key: str
    signature: str


def parse_authorization(authorization: str) -> Claim:
    """Split ``Authorization: LAMINA|VISOR <access_key>:<signature>``; refuse, before any
    lookup, what cannot name a user (too long, not ASCII, not an access key's shape)."""
    if len(authorization) > MAX_AUTHORIZATION or not authorization.isascii():
        raise AuthenticationFailed(
            "auth_malformed",
            f"the Authorization header must be ASCII and at most {MAX_AUTHORIZATION} characters",
        )
    scheme, _, rest = authorization.partition(" ")
    access_key, sep, sent = rest.strip().rpartition(":")
    if scheme not in ("LAMINA", "VISOR") or not sep or not access_key or not sent:
        raise AuthenticationFailed(
            "auth_malformed",
            "the Authorization header must read 'LAMINA <access_key>:<signature>' "
            "(or 'VISOR <access_key>:<signature>')",
        )
    if not ACCESS_KEY.match(access_key):
        raise AuthenticationFailed(
            "auth_malformed", "an access key is 1-64 letters, digits or _.@- (this is not one)"
        )
    return Claim(scheme, access_key, sent)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name.lower())


@functools.lru_cache(maxsize=256)
def _parse_date(date: str) -> datetime:
    """An HTTP date; cached, as the requests of one second all carry the same few."""
    when = parsedate_to_datetime(date)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def check_date(date: str | None, now: datetime | None = None) -> None:
    if not date:
        raise AuthenticationFailed(
            "auth_malformed", "the request carries no Date or X-Lamina-Date header to sign"
        )
    try:
        when = _parse_date(date) if len(date) <= 64 else None
    except (TypeError, ValueError):
        when = None
    if when is None:
        raise AuthenticationFailed(
            "auth_malformed", f"cannot read the date {excerpt(date)!r} (RFC 1123, in GMT)"
        )
    skew = abs(((now or datetime.now(UTC)) - when).total_seconds())
    if skew > signing.MAX_SKEW_SECONDS:
        raise AuthenticationFailed(
            "auth_clock_skew",
            f"the request is dated {skew:.0f}s away from the server's clock (at most "
            f"{signing.MAX_SKEW_SECONDS}s allowed): check the client's clock, or this is a replay",
        )


def visor_refusal(
    method: str, path: str, query: str, headers: Mapping[str, str], has_body: bool
) -> str | None:
    """Why a VISOR signature cannot vouch for this request (None: it can). It signs the
    method, the date and the path only: so no body, no signed header (metadata), and no
    query but an image listing's filters (a read with the caller's own rights)."""
    if has_body:
        return "a VISOR signature covers no body: sign this request with LAMINA"
    if any(signing.is_signed_header(name) for name in headers):
        return (
            "a VISOR signature covers no X-Image-Meta-*, Upload-* or X-Lamina-* header: "
            "sign this request with LAMINA"
        )
    if query and not (method == "GET" and path in VISOR_QUERY_PATHS):
        return "a VISOR signature covers no query: sign this request with LAMINA"
    return None


def verify_signature(
    cache: KeyCache,
    *,
    claim: Claim,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    has_body: bool,
    visor: bool,
) -> tuple[Principal, str | None]:
    """Check a signed request from its headers; return the caller and the body hash the
    signature vouches for (``UNSIGNED-PAYLOAD``, or None for a VISOR request, which has no
    body). The caller checks the body against that hash as it reads it."""
    declared: str | None = None
    if claim.scheme == "VISOR":
        if not visor:
            raise AuthenticationFailed(
                "auth_visor_refused",
                "VISOR signatures are turned off on this manager (identity.visor_signatures): "
                "sign with LAMINA",
            )
        refusal = visor_refusal(method, path, query, headers, has_body)
        if refusal:
            raise AuthenticationFailed("auth_visor_refused", refusal)
        date = _header(headers, "Date")
        check_date(date)
        string = signing.visor_string(method, date or "", path)

        def sign(secret: str) -> str:
            return signing.visor_signature(secret, string)

        via = "visor-signature"
    else:
        date = _header(headers, signing.DATE_HEADER) or _header(headers, "Date")
        check_date(date)
        declared = _header(headers, signing.BODY_HEADER)
        if declared is None:
            raise AuthenticationFailed(
                "auth_malformed", f"the request carries no {signing.BODY_HEADER} header"
            )
        if declared != signing.UNSIGNED and not _SHA256_HEX.match(declared):
            raise AuthenticationFailed(
                "auth_malformed",
                f"{signing.BODY_HEADER} must be the body's SHA-256 in lower-case hex, "
                f"or {signing.UNSIGNED}",
            )
        try:
            lines = signing.canonical_headers(headers.items())
        except signing.UnsignableHeader as exc:
            raise AuthenticationFailed("auth_malformed", str(exc)) from None
        canonical = signing.canonical_request(method, path, query, date or "", declared, lines)

        def sign(secret: str) -> str:
            return signing.signature(secret, canonical)

        via = "signature"
    creds = cache.get(claim.access_key)
    # An unknown key, or one without an active secret, is checked against a made-up secret:
    # the same work and the same answer as a wrong signature, so neither tells which keys exist.
    secrets = (creds.secrets if creds is not None else ()) or (_DUMMY_SECRET,)
    sent = claim.signature.encode()
    # Compare with every active key (rotation), always all of them: no early exit to time.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(sign(secret).encode(), sent)
    if not matched or creds is None or not creds.secrets:
        raise AuthenticationFailed("auth_bad_signature", BAD_SIGNATURE)
    p = creds.principal
    return Principal(p.user_id, p.access_key, p.role, via), declared
