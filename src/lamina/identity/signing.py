"""Request signing: the canonical request, HMAC signatures, and an httpx ``Auth`` that signs.

The Lamina scheme (HMAC-SHA256, hex):

    canonical = METHOD "\\n" PATH "\\n" QUERY "\\n" DATE "\\n" [HEADER "\\n" ...] BODY_SHA256
    signature = hex(HMAC-SHA256(secret_key, canonical))
    Authorization: LAMINA <access_key>:<signature>

- METHOD is upper case; PATH is the request path as sent (percent-encoded, no query);
- QUERY is the query's ``name=value`` pairs sorted by name then value, each part encoded with
  RFC 3986 unreserved characters kept (``A-Z a-z 0-9 - _ . ~``), joined by ``&`` (empty if none);
- DATE is the value of the ``X-Lamina-Date`` header if present, else of ``Date`` (RFC 1123,
  e.g. ``Tue, 20 May 2012 15:11:05 GMT``); it must be within 5 minutes of the server's clock;
- HEADER lines, one per signed header, sorted by name: ``name:value`` with the name lower
  case and the value trimmed of spaces and tabs at both ends. Signed are every
  ``X-Image-Meta-*``, ``Upload-*`` and ``X-Lamina-*`` header but ``X-Lamina-Date`` and
  ``X-Lamina-Content-SHA256`` (they have lines of their own); none may be repeated. A value
  is its bytes as sent, one character per byte (ISO-8859-1, as the server reads headers);
  the canonical request is hashed as UTF-8. No list of them is sent: the server signs
  whatever such headers it received, so adding, removing or changing one breaks the
  signature. A request without such headers has the five lines above, as before headers were
  signed.
- BODY_SHA256 is the hex SHA-256 of the body, sent as ``X-Lamina-Content-SHA256``
  (``e3b0c442...`` for an empty body), or ``UNSIGNED-PAYLOAD`` for a streamed image upload
  whose checksum the client declares in a signed header (``X-Image-Meta-Sha256``).

VISOR's scheme is accepted when ``identity.visor_signatures`` is on: ``Authorization: VISOR
<access_key>:<signature>`` with ``signature = base64(HMAC-SHA1(secret_key, METHOD
"\\n\\n\\n" DATE "\\n" PATH))``; it covers no query, header or body (see ``authn``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Generator, Iterable, Sequence
from email.utils import formatdate
from urllib.parse import parse_qsl, quote

import httpx

UNSIGNED = "UNSIGNED-PAYLOAD"
BODY_HEADER = "X-Lamina-Content-SHA256"
DATE_HEADER = "X-Lamina-Date"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW_SECONDS = 300
#: Every header whose name starts with one of these is signed (names compared lower case).
SIGNED_PREFIXES = ("x-image-meta-", "upload-", "x-lamina-")
#: Signed too, but on lines of their own.
_OWN_LINES = (DATE_HEADER.lower(), BODY_HEADER.lower())


class UnsignableHeader(ValueError):
    """A header that must be signed but cannot be: one sent twice."""


def is_signed_header(name: str) -> bool:
    lower = name.lower()
    return lower.startswith(SIGNED_PREFIXES) and lower not in _OWN_LINES


def canonical_headers(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The canonical request's header lines (``name:value``, sorted by name) of ``headers``
    (name, value) pairs, values as ISO-8859-1 text of their bytes); raises
    ``UnsignableHeader`` for a signed one that is repeated."""
    found: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if not is_signed_header(lower):
            continue
        if lower in found:
            raise UnsignableHeader(f"the signed header {name[:64]} is repeated")
        found[lower] = value.strip(" \t")
    return [f"{name}:{found[name]}" for name in sorted(found)]


def canonical_query(raw: str) -> str:
    pairs = sorted(parse_qsl(raw, keep_blank_values=True))
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


def canonical_request(
    method: str,
    path: str,
    query: str,
    date: str,
    body_sha256: str,
    header_lines: Sequence[str] = (),
) -> str:
    return "\n".join(
        (method.upper(), path, canonical_query(query), date, *header_lines, body_sha256)
    )


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
    headers: Iterable[tuple[str, str]] = (),
) -> dict[str, str]:
    """The headers that sign a request whose other headers are ``headers`` ((name, value)
    pairs: those of them that are signed go into the signature, so send them unchanged)."""
    date = date or http_date()
    body_sha = UNSIGNED if unsigned_payload else hashlib.sha256(body or b"").hexdigest()
    lines = canonical_headers(headers)
    canonical = canonical_request(method, path, query, date, body_sha, lines)
    return {
        DATE_HEADER: date,
        BODY_HEADER: body_sha,
        "Authorization": f"LAMINA {access_key}:{signature(secret, canonical)}",
    }


class LaminaAuth(httpx.Auth):
    """Signs every request an httpx client sends, its ``X-Image-Meta-*``, ``Upload-*`` and
    ``X-Lamina-*`` headers included. A body given as bytes (or JSON) is hashed; one given as an
    iterator is streamed as UNSIGNED-PAYLOAD, never read into memory (the caller then declares
    its checksum, e.g. X-Image-Meta-Sha256, which is signed)."""

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
            # The bytes that will be sent, one character per byte, as the server reads them.
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
        )
        request.headers.update(headers)
        yield request
