"""Establishing who sent a request: signatures (Lamina's and VISOR's) and web sessions.

Every failure is an ``AuthenticationFailed`` (403) whose code and message say what was wrong
without revealing a secret: ``auth_missing``, ``auth_malformed``, ``auth_unknown_key``,
``auth_bad_signature``, ``auth_clock_skew``, ``auth_bad_body``, ``auth_session``, ``csrf_failed``.
Signatures are compared in constant time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from sqlalchemy import select

from lamina.db import Database
from lamina.errors import AuthenticationFailed
from lamina.identity import signing
from lamina.identity.models import User
from lamina.identity.principal import Principal
from lamina.identity.secretbox import SecretBox
from lamina.identity.users import active_secrets


@dataclass(frozen=True)
class Credentials:
    principal: Principal
    secrets: tuple[str, ...]


class KeyCache:
    """Users' active secrets, kept for a few seconds so a signed request costs no database
    round trip. Changes made through this manager take effect at once (``forget``); other
    managers see them within ``ttl`` seconds."""

    def __init__(self, db: Database, box: SecretBox, ttl: float) -> None:
        self.db, self.box, self.ttl = db, box, ttl
        self._entries: dict[str, tuple[float, Credentials | None]] = {}
        self._lock = threading.Lock()

    def get(self, access_key: str) -> Credentials | None:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(access_key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        with self.db.read() as s:
            user = s.scalar(select(User).where(User.access_key == access_key))
            creds = None
            if user is not None:
                creds = Credentials(
                    Principal(user.id, user.access_key, user.role),
                    tuple(active_secrets(s, self.box, user.id)),
                )
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[access_key] = (now, creds)
        return creds

    def fresh(self, access_key: str) -> bool:
        """True when ``get`` would answer from memory, without the database."""
        with self._lock:
            hit = self._entries.get(access_key)
        return hit is not None and time.monotonic() - hit[0] < self.ttl

    def forget(self) -> None:
        with self._lock:
            self._entries.clear()


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
        when = _parse_date(date)
    except (TypeError, ValueError):
        raise AuthenticationFailed("auth_malformed", f"cannot read the date {date!r}") from None
    skew = abs(((now or datetime.now(UTC)) - when).total_seconds())
    if skew > signing.MAX_SKEW_SECONDS:
        raise AuthenticationFailed(
            "auth_clock_skew",
            f"the request is dated {skew:.0f}s away from the server's clock (at most "
            f"{signing.MAX_SKEW_SECONDS}s allowed): check the client's clock, or this is a replay",
        )


def verify_signature(
    cache: KeyCache,
    *,
    authorization: str,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    streamed_upload: bool,
) -> Principal:
    scheme, _, rest = authorization.partition(" ")
    access_key, sep, sent = rest.strip().rpartition(":")
    if scheme not in ("LAMINA", "VISOR") or not sep or not access_key or not sent:
        raise AuthenticationFailed(
            "auth_malformed",
            "the Authorization header must read 'LAMINA <access_key>:<signature>' "
            "(or 'VISOR <access_key>:<signature>')",
        )
    creds = cache.get(access_key)
    if creds is None:
        raise AuthenticationFailed("auth_unknown_key", f"no user has the access key {access_key!r}")
    if not creds.secrets:
        raise AuthenticationFailed(
            "auth_unknown_key", f"user {access_key!r} has no active secret key (revoked?)"
        )
    if scheme == "VISOR":
        date = _header(headers, "Date")
        check_date(date)
        string = signing.visor_string(method, date or "", path)
        expected = [signing.visor_signature(secret, string) for secret in creds.secrets]
        via = "visor-signature"
    else:
        date = _header(headers, signing.DATE_HEADER) or _header(headers, "Date")
        check_date(date)
        declared = _header(headers, signing.BODY_HEADER)
        if declared is None:
            raise AuthenticationFailed(
                "auth_malformed", f"the request carries no {signing.BODY_HEADER} header"
            )
        if declared == signing.UNSIGNED:
            if not streamed_upload:
                raise AuthenticationFailed(
                    "auth_bad_body",
                    f"{signing.UNSIGNED} is accepted only for streamed uploads "
                    "(Content-Type: application/octet-stream)",
                )
        elif not hmac.compare_digest(declared, hashlib.sha256(body).hexdigest()):
            raise AuthenticationFailed(
                "auth_bad_body",
                f"the body does not match its {signing.BODY_HEADER}: it was changed in transit",
            )
        canonical = signing.canonical_request(method, path, query, date or "", declared)
        expected = [signing.signature(secret, canonical) for secret in creds.secrets]
        via = "signature"
    # Compare with every active key (rotation), always all of them: no early exit to time.
    matched = False
    for candidate in expected:
        matched |= hmac.compare_digest(candidate, sent)
    if not matched:
        raise AuthenticationFailed(
            "auth_bad_signature",
            f"the signature does not match for access key {access_key!r}: check the secret key "
            "and how the canonical request is built",
        )
    p = creds.principal
    return Principal(p.user_id, p.access_key, p.role, via)
