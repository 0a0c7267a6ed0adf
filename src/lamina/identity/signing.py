"""Request signing: the canonical request, HMAC signatures, and an httpx ``Auth`` that signs.

The Lamina scheme (HMAC-SHA256, hex):

    canonical = METHOD "\\n" PATH "\\n" QUERY "\\n" DATE "\\n" BODY_SHA256
    signature = hex(HMAC-SHA256(secret_key, canonical))
    Authorization: LAMINA <access_key>:<signature>

- METHOD is upper case; PATH is the request path as sent (percent-encoded, no query);
- QUERY is the query's ``name=value`` pairs sorted by name then value, each part encoded with
  RFC 3986 unreserved characters kept (``A-Z a-z 0-9 - _ . ~``), joined by ``&`` (empty if none);
- DATE is the value of the ``X-Lamina-Date`` header if present, else of ``Date`` (RFC 1123,
  e.g. ``Tue, 20 May 2012 15:11:05 GMT``); it must be within 5 minutes of the server's clock;
- BODY_SHA256 is the hex SHA-256 of the body, sent as ``X-Lamina-Content-SHA256``
  (``e3b0c442...`` for an empty body), or ``UNSIGNED-PAYLOAD`` for a streamed upload whose
  checksum the client declares separately.

VISOR's scheme is accepted too: ``Authorization: VISOR <access_key>:<signature>`` with
``signature = base64(HMAC-SHA1(secret_key, METHOD "\\n\\n\\n" DATE "\\n" PATH))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Generator
from email.utils import formatdate
from urllib.parse import parse_qsl, quote

import httpx

UNSIGNED = "UNSIGNED-PAYLOAD"
BODY_HEADER = "X-Lamina-Content-SHA256"
DATE_HEADER = "X-Lamina-Date"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW_SECONDS = 300


def canonical_query(raw: str) -> str:
    pairs = sorted(parse_qsl(raw, keep_blank_values=True))
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


def canonical_request(method: str, path: str, query: str, date: str, body_sha256: str) -> str:
    return "\n".join((method.upper(), path, canonical_query(query), date, body_sha256))


def signature(secret: str, canonical: str) -> str:
    return hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def visor_string(method: str, date: str, path: str) -> str:
    return f"{method.upper()}\n\n\n{date}\n{path}"


def visor_signature(secret: str, string_to_sign: str) -> str:
    digest = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def http_date() -> str:
    return formatdate(usegmt=True)


def sign_headers(
    method: str,
    path: str,
    query: str,
    body: bytes | None,
    access_key: str,
    secret: str,
    *,
    date: str | None = None,
    unsigned_payload: bool = False,
) -> dict[str, str]:
    """The headers that sign a request."""
    date = date or http_date()
    body_sha = UNSIGNED if unsigned_payload else hashlib.sha256(body or b"").hexdigest()
    canonical = canonical_request(method, path, query, date, body_sha)
    return {
        DATE_HEADER: date,
        BODY_HEADER: body_sha,
        "Authorization": f"LAMINA {access_key}:{signature(secret, canonical)}",
    }


class LaminaAuth(httpx.Auth):
    """Signs every request an httpx client sends. A body given as bytes (or JSON) is hashed;
    one given as an iterator is streamed as UNSIGNED-PAYLOAD, never read into memory (the
    caller then declares its checksum, e.g. X-Image-Meta-Sha256)."""

    # httpx loads byte bodies at once by itself; asking for the body would also load streams.
    requires_request_body = False

    def __init__(self, access_key: str, secret: str) -> None:
        self.access_key = access_key
        self.secret = secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        streamed = not isinstance(request.stream, httpx.ByteStream)
        headers = sign_headers(
            request.method,
            request.url.raw_path.split(b"?", 1)[0].decode(),
            request.url.query.decode(),
            None if streamed else request.content,
            self.access_key,
            self.secret,
            unsigned_payload=streamed,
        )
        request.headers.update(headers)
        yield request
