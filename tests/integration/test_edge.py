"""The manager's edge against hostile requests, on a real ``lamina serve``: nothing is buffered
or parsed before authentication, limits on bodies and headers, every signed header in the
signature, exact media types, no 500 for odd bytes, and the same answer for an unknown key as
for a bad signature."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable
from email.utils import formatdate

import httpx
import pytest
from harness import Cloud

from lamina.identity import signing

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture
def bare(make_cloud: Callable[..., Cloud]) -> Cloud:
    """A manager alone (no host): these tests only talk to its API."""
    c = make_cloud()
    c.start_manager()
    return c


def rss_mib(cloud: Cloud) -> float:
    proc = cloud.managers[0].proc
    assert proc is not None
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


def raw_request(cloud: Cloud, head: str, body_parts: int, part: bytes, hold: float) -> bytes:
    """Send ``head`` then up to ``body_parts`` x ``part`` (stopping when the server closes),
    keep the connection ``hold`` seconds, and return what the server answered."""
    sock = socket.create_connection(("127.0.0.1", cloud.port), timeout=10)
    answer = b""
    try:
        sock.sendall(head.encode("latin-1"))
        for _ in range(body_parts):
            sock.sendall(part)
    except OSError:
        pass  # the server refused and closed: read what it answered
    time.sleep(hold)
    try:
        sock.settimeout(2)
        while chunk := sock.recv(65536):
            answer += chunk
    except OSError:
        pass
    finally:
        sock.close()
    return answer


def forged_headers(extra: dict[str, str]) -> str:
    date = formatdate(usegmt=True)
    headers = {
        "Host": "127.0.0.1",
        signing.DATE_HEADER: date,
        signing.BODY_HEADER: hashlib.sha256(b"x").hexdigest(),
        "Authorization": f"LAMINA nobody-{os.urandom(4).hex()}:{'0' * 64}",
        **extra,
    }
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items())


def test_oversized_unauthenticated_bodies_leave_memory_alone(bare: Cloud) -> None:
    """Item 2: 20 requests declaring 256 MiB bodies (JSON to a signed route, UNSIGNED-PAYLOAD
    JSON, chunked JSON to the unauthenticated login), each sending 16 MiB, all at once."""
    httpx.get(f"{bare.url}/health")
    time.sleep(1)
    idle = rss_mib(bare)
    declared = 256 * MiB
    part = b"[" + b"1," * (MiB // 2 - 1) + b"1"  # about 1 MiB of JSON-looking bytes
    heads = []
    for i in range(20):
        if i % 4 == 0:  # chunked, to a route that needs no signature
            chunk = f"{len(part):x}\r\n".encode() + part + b"\r\n"
            heads.append(
                (
                    "POST /session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n",
                    chunk,
                )
            )
            continue
        extra = {"Content-Type": "application/json", "Content-Length": str(declared)}
        if i % 4 == 1:
            extra[signing.BODY_HEADER] = signing.UNSIGNED
        heads.append((f"POST /users HTTP/1.1\r\n{forged_headers(extra)}\r\n", part))
    peak = idle
    answers: list[bytes] = []
    threads = [
        threading.Thread(target=lambda h=h, p=p: answers.append(raw_request(bare, h, 16, p, 3)))
        for h, p in heads
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mib(bare))
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert bare.managers[0].alive()
    assert peak - idle < 64, f"RSS went from {idle:.0f} to {peak:.0f} MiB"
    print(f"idle {idle:.1f} MiB, peak {peak:.1f} MiB")
    # Each was refused (403 before any byte of its body, or 413), never a 5xx.
    statuses = [a.split(b" ", 2)[1] for a in answers if a.startswith(b"HTTP/1.1")]
    assert statuses and all(s in (b"403", b"413") for s in statuses), statuses
    assert httpx.get(f"{bare.url}/health").status_code == 200


def test_huge_access_keys_are_neither_kept_nor_echoed(bare: Cloud) -> None:
    """Items 3 and 10: 300 requests with 1 MiB random access keys do not raise the RSS; a
    60 KB key is not echoed; a key too long to exist is refused before any lookup."""
    httpx.get(f"{bare.url}/health")
    idle = rss_mib(bare)
    with httpx.Client(base_url=bare.url, timeout=30) as http:
        for _ in range(300):
            key = os.urandom(MiB // 2).hex()
            headers = {
                "Authorization": f"LAMINA {key}:{'0' * 64}",
                signing.DATE_HEADER: formatdate(usegmt=True),
                signing.BODY_HEADER: signing.EMPTY_SHA256,
            }
            try:
                assert http.get("/whoami", headers=headers).status_code in (403, 431)
            except httpx.HTTPError:
                pass  # the server may close a connection that sends too much header
    time.sleep(1)
    grown = rss_mib(bare) - idle
    print(f"RSS idle {idle:.1f} MiB, after 300 x 1 MiB keys +{grown:.1f} MiB")
    assert grown < 32, f"RSS grew by {grown:.0f} MiB"
    key = "k" * 60_000
    response = httpx.get(
        f"{bare.url}/whoami",
        headers={
            "Authorization": f"LAMINA {key}:{'0' * 64}",
            signing.DATE_HEADER: formatdate(usegmt=True),
            signing.BODY_HEADER: signing.EMPTY_SHA256,
        },
    )
    assert response.status_code in (403, 431)
    assert key[:100] not in response.text and len(response.content) < 1024
    big = httpx.get(f"{bare.url}/whoami", headers={"X-Big": "y" * 200_000})
    assert code(big) == (431, "headers_too_large") and big.headers["connection"] == "close"
    long_key = "k" * 200  # fits every header limit, but no access key is that long
    response = httpx.get(
        f"{bare.url}/whoami",
        headers=signing.sign_headers("GET", "/whoami", "", b"", long_key, "secret"),
    )
    assert code(response) == (403, "auth_malformed") and long_key not in response.text


def test_unknown_key_and_bad_signature_answer_alike(bare: Cloud) -> None:
    """Item 10: the same status, code and message whether the access key exists or not."""
    admin, secret = bare.keys()

    def ask(access: str, key: str) -> httpx.Response:
        headers = signing.sign_headers("GET", "/whoami", "", b"", access, key)
        return httpx.get(f"{bare.url}/whoami", headers=headers)

    unknown, wrong = ask("nobody", secret), ask(admin, secret + "x")
    assert unknown.status_code == wrong.status_code == 403
    assert unknown.json() == wrong.json()
    assert "nobody" not in unknown.text and admin not in wrong.text
    # No timing to tell them apart: medians within a millisecond.
    with httpx.Client(base_url=bare.url) as http:
        timings: dict[str, list[float]] = {"unknown": [], "wrong": []}
        for _ in range(60):
            for name, (access, key) in (
                ("unknown", ("nobody", secret)),
                ("wrong", (admin, secret + "x")),
            ):
                headers = signing.sign_headers("GET", "/whoami", "", b"", access, key)
                started = time.perf_counter()
                http.get("/whoami", headers=headers)
                timings[name].append(time.perf_counter() - started)
    medians = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    print(f"median ms: {medians}")


def test_a_replayed_put_with_other_metadata_is_refused(bare: Cloud) -> None:
    """Item 6: X-Image-Meta-*, Upload-* and X-Lamina-* headers are signed."""
    http = bare.http
    image = http.post("/images", headers={"X-Image-Meta-Name": "mine"}).json()["image"]
    assert image["status"] == "locked"
    request = http.build_request(
        "PUT",
        f"/images/{image['id']}",
        headers={"X-Image-Meta-Access": "private", "X-Image-Meta-Name": "mine"},
    )
    signed = next(bare.auth.auth_flow(request))
    captured = dict(signed.headers)
    replay = {**captured, "x-image-meta-access": "public"}
    with httpx.Client(base_url=bare.url) as raw:
        changed = raw.put(f"/images/{image['id']}", headers=replay)
        assert code(changed) == (403, "auth_bad_signature")
        added = raw.put(f"/images/{image['id']}", headers={**captured, "x-image-meta-owner2": "x"})
        assert code(added) == (403, "auth_bad_signature")
        assert raw.put(f"/images/{image['id']}", headers=captured).status_code == 200
    assert http.get(f"/images/{image['id']}/history").status_code == 200
    detail = http.head(f"/images/{image['id']}")
    assert detail.headers["x-image-meta-access"] == "private"


def test_unsigned_payload_only_for_exact_octet_stream_uploads(bare: Cloud) -> None:
    """Item 7: UNSIGNED-PAYLOAD with application/octet-stream+json creates no user."""
    admin, secret = bare.keys()
    body = json.dumps({"access_key": "mallory", "email": "m@example.com", "role": "admin"})
    for kind in ("application/octet-stream+json", "application/octet-streamx", "text/plain"):
        headers = signing.sign_headers(
            "POST", "/users", "", None, admin, secret, unsigned_payload=True
        )
        headers["Content-Type"] = kind
        response = httpx.post(f"{bare.url}/users", headers=headers, content=body)
        assert response.status_code in (400, 403) and response.json()["code"], response.text
    # Exactly application/octet-stream, but not an upload route: refused as well.
    headers = signing.sign_headers("POST", "/users", "", None, admin, secret, unsigned_payload=True)
    headers["Content-Type"] = "application/octet-stream"
    response = httpx.post(f"{bare.url}/users", headers=headers, content=body)
    assert code(response) == (403, "auth_bad_body")
    assert httpx.get(f"{bare.url}/users/mallory", auth=bare.auth).status_code == 404


def test_non_ascii_credentials_are_a_403(bare: Cloud) -> None:
    """Item 8: non-ASCII in Authorization or the body hash is a 403 with a code, not a 500."""
    admin, secret = bare.keys()
    with httpx.Client(base_url=bare.url) as http:
        headers = signing.sign_headers("GET", "/whoami", "", b"", admin, secret)
        bad_auth = {**headers, "Authorization": f"LAMINA {admin}:".encode() + b"\xe9" * 64}
        assert code(http.get("/whoami", headers=bad_auth)) == (403, "auth_malformed")
        bad_key = {**headers, "Authorization": b"LAMINA \xe9\xe9:" + b"0" * 64}
        assert code(http.get("/whoami", headers=bad_key)) == (403, "auth_malformed")
        bad_hash = {**headers, signing.BODY_HEADER: b"\xe9" * 64}
        assert code(http.get("/whoami", headers=bad_hash)) == (403, "auth_malformed")


def test_nul_in_the_url_is_a_400(bare: Cloud) -> None:
    """Item 8: NUL in a query name or value, or in the path, is a 400, not a database error."""
    admin, secret = bare.keys()
    with httpx.Client(base_url=bare.url) as http:
        for path in ("/images?a%00=1", "/images?a=%00", "/images/%00x", "/instances/a%00b"):
            raw_path, _, query = path.partition("?")
            signed = signing.sign_headers("GET", raw_path, query, b"", admin, secret)
            response = http.get(path, headers=signed)
            assert code(response) == (400, "invalid_request"), (path, response.text)


def test_visor_signatures_are_off_by_default(bare: Cloud) -> None:
    """Item 5: off unless identity.visor_signatures is set."""
    admin, secret = bare.keys()
    date = formatdate(usegmt=True)
    sig = signing.visor_signature(secret, f"GET\n\n\n{date}\n/images")
    response = httpx.get(
        f"{bare.url}/images", headers={"Date": date, "Authorization": f"VISOR {admin}:{sig}"}
    )
    assert code(response) == (403, "auth_visor_refused")


def test_visor_signatures_never_cover_a_body(make_cloud: Callable[..., Cloud]) -> None:
    """Item 5: with VISOR on, one signature cannot carry a body (or a query, but for an image
    listing): two different bodies under one signature made two administrators."""
    cloud = make_cloud(LAMINA_IDENTITY__VISOR_SIGNATURES="true")
    cloud.start_manager()
    admin, secret = cloud.keys()
    date = formatdate(usegmt=True)

    def visor(method: str, path: str, **kwargs: object) -> httpx.Response:
        sig = signing.visor_signature(secret, f"{method}\n\n\n{date}\n{path.partition('?')[0]}")
        headers = {"Date": date, "Authorization": f"VISOR {admin}:{sig}"}
        return httpx.request(method, cloud.url + path, headers=headers, **kwargs)  # type: ignore[arg-type]

    for name in ("eve", "eve2"):
        body = {"access_key": name, "email": f"{name}@example.com", "role": "admin"}
        assert code(visor("POST", "/users", json=body)) == (403, "auth_visor_refused")
    assert code(visor("GET", "/instances?limit=1")) == (403, "auth_visor_refused")
    assert visor("GET", "/instances").status_code == 200
    assert visor("GET", "/images?name=x").status_code in (200, 404)
    users = [u["access_key"] for u in cloud.client().users()]
    assert "eve" not in users and "eve2" not in users


def test_nul_anywhere_is_a_400_on_postgresql(make_cloud: Callable[..., Cloud], pg_url: str) -> None:
    """Item 8: PostgreSQL cannot store NUL in text; wherever it comes from (query, path, a JSON
    body) the answer is a 400, not the database's 500."""
    cloud = make_cloud(pg_url)
    cloud.start_manager()
    admin, secret = cloud.keys()
    with httpx.Client(base_url=cloud.url) as http:
        for path in ("/images?a%00=1", "/images/%00x"):
            raw_path, _, query = path.partition("?")
            signed = signing.sign_headers("GET", raw_path, query, b"", admin, secret)
            assert code(http.get(path, headers=signed)) == (400, "invalid_request"), path
        login = http.post("/session", json={"access_key": "a\u0000b", "secret": "x"})
        assert code(login) == (400, "invalid_request")
        assert http.get("/health").status_code == 200
