"""Signing and verification without a server: the canonical headers, what one signature
vouches for, the same answer for unknown keys as for wrong signatures, VISOR's limits, and a
key cache that made-up keys cannot fill."""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from lamina.db import Database
from lamina.errors import AuthenticationFailed
from lamina.identity import signing
from lamina.identity.authn import (
    MAX_AUTHORIZATION,
    Credentials,
    KeyCache,
    parse_authorization,
    verify_signature,
)
from lamina.identity.principal import Principal
from lamina.identity.secretbox import SecretBox
from lamina.identity.users import add_user

SECRET = "s3cret-key"


class FixedKeys:
    """A key cache with one user, ``alice``."""

    def get(self, access_key: str) -> Credentials | None:
        if access_key != "alice":
            return None
        return Credentials(Principal("u1", "alice", "admin"), (SECRET,))

    def fresh(self, access_key: str) -> bool:
        return True


def verify(
    method: str,
    path: str,
    headers: dict[str, str],
    *,
    query: str = "",
    has_body: bool = False,
    visor: bool = False,
) -> tuple[Principal, str | None]:
    lower = {k.lower(): v for k, v in headers.items()}
    return verify_signature(
        FixedKeys(),  # type: ignore[arg-type]
        claim=parse_authorization(lower["authorization"]),
        method=method,
        path=path,
        query=query,
        headers=lower,
        has_body=has_body,
        visor=visor,
    )


def refused(code: str, *args: object, **kwargs: object) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        verify(*args, **kwargs)  # type: ignore[arg-type]
    assert caught.value.code == code, caught.value.message
    return caught.value


def test_canonical_headers_are_sorted_lower_case_and_trimmed() -> None:
    lines = signing.canonical_headers(
        [
            ("X-Image-Meta-Name", "  Debian 12 \t"),
            ("Content-Type", "application/octet-stream"),
            ("Upload-Offset", "5"),
            ("X-Lamina-Date", "ignored: a line of its own"),
            ("X-Lamina-Content-SHA256", signing.UNSIGNED),
            ("x-image-meta-access", "private"),
            ("X-Lamina-Anything", "x"),
        ]
    )
    assert lines == [
        "upload-offset:5",
        "x-image-meta-access:private",
        "x-image-meta-name:Debian 12",
        "x-lamina-anything:x",
    ]
    # Without such headers the canonical request is the five lines it always was.
    assert signing.canonical_request("get", "/a", "b=1", "D", "H") == "GET\n/a\nb=1\nD\nH"
    with pytest.raises(signing.UnsignableHeader):
        signing.canonical_headers([("X-Image-Meta-Name", "a"), ("x-image-meta-name", "b")])
    # A value is its bytes as sent, one character per byte: signed as the server reads it.
    raw = httpx.Request("PUT", "http://m/images/a", headers={"X-Image-Meta-Size": b"\xb2"})
    signed = dict(next(signing.LaminaAuth("alice", SECRET).auth_flow(raw)).headers)
    assert verify("PUT", "/images/a", {**signed, "x-image-meta-size": "\xb2"})


def test_lamina_auth_signs_the_metadata_headers() -> None:
    request = httpx.Request(
        "PUT",
        "http://manager/images/abc",
        headers={"X-Image-Meta-Access": "private", "Upload-Offset": "0"},
    )
    signed = next(signing.LaminaAuth("alice", SECRET).auth_flow(request))
    headers = dict(signed.headers)
    assert verify("PUT", "/images/abc", headers)[0].access_key == "alice"
    for name, value in (("x-image-meta-access", "public"), ("upload-offset", "1")):
        refused("auth_bad_signature", "PUT", "/images/abc", {**headers, name: value})
    refused("auth_bad_signature", "PUT", "/images/abc", {**headers, "x-image-meta-owner": "b"})
    without = {k: v for k, v in headers.items() if k != "upload-offset"}
    refused("auth_bad_signature", "PUT", "/images/abc", without)
    # The declared checksum of an unsigned upload is a signed header too.
    upload = httpx.Request(
        "POST",
        "http://manager/images",
        headers={"X-Image-Meta-Sha256": "a" * 64},
        content=iter([b"data"]),
    )
    up = dict(next(signing.LaminaAuth("alice", SECRET).auth_flow(upload)).headers)
    assert up[signing.BODY_HEADER.lower()] == signing.UNSIGNED
    assert verify("POST", "/images", up, has_body=True)[1] == signing.UNSIGNED
    refused("auth_bad_signature", "POST", "/images", {**up, "x-image-meta-sha256": "b" * 64})


def test_an_unknown_key_answers_as_a_wrong_signature() -> None:
    good = signing.sign_headers("GET", "/whoami", "", b"", "alice", SECRET)
    assert verify("GET", "/whoami", good)[0].user_id == "u1"
    wrong = refused(
        "auth_bad_signature",
        "GET",
        "/whoami",
        signing.sign_headers("GET", "/whoami", "", b"", "alice", "other"),
    )
    unknown = refused(
        "auth_bad_signature",
        "GET",
        "/whoami",
        signing.sign_headers("GET", "/whoami", "", b"", "bob", SECRET),
    )
    assert wrong.message == unknown.message and "bob" not in unknown.message


def test_authorization_that_cannot_name_a_user_is_refused_before_any_lookup() -> None:
    for value in (
        "LAMINA " + "k" * MAX_AUTHORIZATION + ":" + "0" * 64,
        "LAMINA " + "k" * 65 + ":" + "0" * 64,
        "LAMINA al/ice:" + "0" * 64,
        "LAMINA alicé:" + "0" * 64,
        "LAMINA alice:" + "é" * 64,
        "Bearer x",
    ):
        with pytest.raises(AuthenticationFailed) as caught:
            parse_authorization(value)
        assert caught.value.code == "auth_malformed"
        assert len(caught.value.message) < 200
    headers = signing.sign_headers("GET", "/whoami", "", b"", "alice", SECRET)
    refused("auth_malformed", "GET", "/whoami", {**headers, signing.BODY_HEADER: "é" * 64})
    refused("auth_malformed", "GET", "/whoami", {**headers, signing.BODY_HEADER: "A" * 64})
    long_date = {**headers, signing.DATE_HEADER: "x" * 10_000}
    assert len(refused("auth_malformed", "GET", "/whoami", long_date).message) < 200


def visor_headers(method: str, path: str) -> dict[str, str]:
    date = formatdate(usegmt=True)
    sig = signing.visor_signature(SECRET, signing.visor_string(method, date, path))
    return {"Date": date, "Authorization": f"VISOR alice:{sig}"}


def test_visor_signatures_are_off_unless_turned_on() -> None:
    refused("auth_visor_refused", "GET", "/images", visor_headers("GET", "/images"))
    who, declared = verify("GET", "/images", visor_headers("GET", "/images"), visor=True)
    assert (who.via, declared) == ("visor-signature", None)


@pytest.mark.parametrize(
    ("method", "path", "query", "extra", "has_body"),
    [
        ("POST", "/users", "", {}, True),
        ("POST", "/images", "", {}, True),
        ("PUT", "/images/abc", "", {"X-Image-Meta-Access": "public"}, False),
        ("GET", "/instances", "limit=1", {}, False),
        ("DELETE", "/images", "name=x", {}, False),
    ],
)
def test_visor_never_vouches_for_what_it_does_not_sign(
    method: str, path: str, query: str, extra: dict[str, str], has_body: bool
) -> None:
    headers = {**visor_headers(method, path), **extra}
    refused("auth_visor_refused", method, path, headers, query=query, has_body=has_body, visor=True)


def test_visor_vouches_for_plain_image_calls() -> None:
    for method, path, query in (
        ("GET", "/images", "name=x"),
        ("GET", "/images/detail", "status=available"),
        ("HEAD", "/images/abc", ""),
        ("DELETE", "/images/abc", ""),
        ("GET", "/instances", ""),
    ):
        assert verify(method, path, visor_headers(method, path), query=query, visor=True)


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyCache]:
    db = Database(f"sqlite:///{tmp_path / 'lamina.db'}")
    box = SecretBox(tmp_path)
    with db.write() as s:
        add_user(s, box, access_key="alice", email="alice@example.com")
    yield KeyCache(db, box, ttl=60)
    db.dispose()


def test_made_up_keys_cannot_fill_the_key_cache(keys: KeyCache) -> None:
    assert keys.get("alice") is not None and keys.fresh("alice")
    keys.MAX_MISSES = 50
    for i in range(200):
        assert keys.get(f"nobody-{i}") is None
    assert keys.get("k" * 1000) is None
    assert len(keys._misses) == 50 and not keys.fresh("k" * 1000)
    # A remembered miss answers from memory, as a known key does.
    assert keys.fresh("nobody-199") and not keys.fresh("nobody-0")
    keys.forget()
    assert not keys.fresh("nobody-199") and not keys.fresh("alice")


def test_an_unknown_key_costs_the_hmac_a_known_one_does(monkeypatch: pytest.MonkeyPatch) -> None:
    signed = {
        access: signing.sign_headers("GET", "/whoami", "", b"", access, "wrong-secret")
        for access in ("alice", "bob")
    }
    calls: list[str] = []
    real = signing.signature

    def counted(secret: str, canonical: str) -> str:
        calls.append(secret)
        return real(secret, canonical)

    monkeypatch.setattr(signing, "signature", counted)
    for access, headers in signed.items():
        calls.clear()
        refused("auth_bad_signature", "GET", "/whoami", headers)
        assert len(calls) == 1, access
