"""Identity against a running manager: signatures (Lamina's and VISOR's), keys, sessions and
CSRF, lock-out, who sees and does what, and quotas under concurrency."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, formatdate
from pathlib import Path

import httpx
import pytest
from harness import Cloud

from lamina.client import Client
from lamina.identity import signing

pytestmark = pytest.mark.integration


@pytest.fixture
def kernel(cloud: Cloud, tmp_path: Path) -> str:
    """A public image members boot from (they may not name host paths)."""
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"k" * 4096)
    return cloud.boot_image(path)


def member(cloud: Cloud, name: str, **quotas: int) -> tuple[Client, str]:
    """A member and their Python client; returns (client, secret)."""
    made = cloud.client().add_user(name, f"{name}@example.com", quotas=quotas or None)
    secret = made["key"]["secret"]
    return cloud.client(name, secret), secret


def signed(
    cloud: Cloud,
    method: str,
    path: str,
    access: str,
    secret: str,
    *,
    body: bytes = b"",
    date: str | None = None,
    send_body: bytes | None = None,
    extra: dict[str, str] | None = None,
) -> httpx.Response:
    raw_path, _, query = path.partition("?")
    headers = signing.sign_headers(method, raw_path, query, body, access, secret, date=date)
    headers.update(extra or {})
    return httpx.request(
        method, cloud.url + path, headers=headers, content=body if send_body is None else send_body
    )


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


def test_requests_without_a_valid_signature_are_refused(cloud: Cloud) -> None:
    admin, secret = cloud.keys()
    missing = httpx.get(f"{cloud.url}/instances")
    assert code(missing) == (403, "auth_missing")
    assert "authorization not provided" in missing.json()["message"]
    assert code(signed(cloud, "GET", "/instances", admin, secret + "x")) == (
        403,
        "auth_bad_signature",
    )
    # An unknown key answers as a wrong signature does: which keys exist is not told.
    assert code(signed(cloud, "GET", "/instances", "nobody", secret)) == (
        403,
        "auth_bad_signature",
    )
    bad = httpx.get(f"{cloud.url}/instances", headers={"Authorization": "Bearer xyz"})
    assert code(bad) == (403, "auth_malformed")
    assert (
        signed(cloud, "GET", "/instances?limit=5&status=running", admin, secret).status_code == 200
    )
    # The health check alone needs no signature.
    assert httpx.get(f"{cloud.url}/health").status_code == 200


def test_a_replay_outside_the_window_is_refused(cloud: Cloud) -> None:
    admin, secret = cloud.keys()
    old = format_datetime(datetime.now(UTC) - timedelta(minutes=6), usegmt=True)
    response = signed(cloud, "GET", "/instances", admin, secret, date=old)
    assert code(response) == (403, "auth_clock_skew")
    assert "replay" in response.json()["message"]
    recent = format_datetime(datetime.now(UTC) - timedelta(minutes=4), usegmt=True)
    assert signed(cloud, "GET", "/instances", admin, secret, date=recent).status_code == 200


def test_a_tampered_body_is_refused(cloud: Cloud) -> None:
    admin, secret = cloud.keys()
    body = json.dumps({"access_key": "carol", "email": "carol@example.com"}).encode()
    evil = json.dumps(
        {"access_key": "carol", "email": "carol@example.com", "role": "admin"}
    ).encode()
    json_type = {"Content-Type": "application/json"}
    response = signed(
        cloud, "POST", "/users", admin, secret, body=body, send_body=evil, extra=json_type
    )
    assert code(response) == (403, "auth_bad_body")
    # Changing the declared hash too breaks the signature instead.
    forged = {**json_type, signing.BODY_HEADER: hashlib.sha256(evil).hexdigest()}
    response = signed(
        cloud, "POST", "/users", admin, secret, body=body, send_body=evil, extra=forged
    )
    assert code(response) == (403, "auth_bad_signature")
    # UNSIGNED-PAYLOAD is only for streamed uploads.
    unsigned = {**json_type, signing.BODY_HEADER: signing.UNSIGNED}
    response = signed(cloud, "POST", "/users", admin, secret, body=body, extra=unsigned)
    assert code(response)[0] == 403
    assert (
        signed(cloud, "POST", "/users", admin, secret, body=body, extra=json_type).status_code
        == 201
    )
    assert cloud.client().user("carol")["role"] == "member"


def test_visor_signed_requests_are_accepted(make_cloud) -> None:  # type: ignore[no-untyped-def]
    cloud = make_cloud(LAMINA_IDENTITY__VISOR_SIGNATURES="true")
    cloud.start_manager()
    admin, secret = cloud.keys()
    date = formatdate(usegmt=True)
    sig = signing.visor_signature(secret, f"GET\n\n\n{date}\n/instances")
    ok = httpx.get(
        f"{cloud.url}/instances", headers={"Date": date, "Authorization": f"VISOR {admin}:{sig}"}
    )
    assert ok.status_code == 200 and "instances" in ok.json()
    wrong = httpx.get(
        f"{cloud.url}/instances",
        headers={"Date": date, "Authorization": f"VISOR {admin}:{sig[:-4]}AAA="},
    )
    assert code(wrong) == (403, "auth_bad_signature")


def test_keys_rotate_and_revoke(cloud: Cloud) -> None:
    admin = cloud.client()
    bob, first = member(cloud, "bob")
    second = admin.create_key("bob")["secret"]
    keys = admin.user("bob")["keys"]
    assert len(keys) == 2 and all(k["active"] for k in keys)
    assert "secret" not in json.dumps(keys)
    assert cloud.client("bob", second).whoami()["access_key"] == "bob"
    admin.revoke_key("bob", keys[0]["id"])
    assert code(signed(cloud, "GET", "/whoami", "bob", first)) == (403, "auth_bad_signature")
    assert cloud.client("bob", second).whoami()["role"] == "member"
    admin.revoke_key("bob", keys[1]["id"])
    response = signed(cloud, "GET", "/whoami", "bob", second)
    assert code(response) == (403, "auth_bad_signature")


def test_user_errors_follow_visor(cloud: Cloud) -> None:
    http = cloud.http
    assert code(http.post("/users", json={"access_key": "x", "email": "nope"})) == (
        400,
        "invalid_request",
    )
    assert code(http.get("/users/ghost")) == (404, "not_found")
    assert http.post("/users", json={"access_key": "dup", "email": "d@x.org"}).status_code == 201
    assert code(http.post("/users", json={"access_key": "dup", "email": "d@x.org"})) == (
        409,
        "conflict",
    )
    assert code(http.put("/users/dup", json={"email": "bad@"})) == (400, "invalid_request")
    assert (
        http.put("/users/dup", json={"email": "new@x.org"}).json()["user"]["email"] == "new@x.org"
    )
    assert http.delete("/users/dup").json()["user"]["access_key"] == "dup"


def test_members_see_their_own_and_public_instances(cloud: Cloud, kernel: str) -> None:
    alice, _ = member(cloud, "alice")
    bob, bob_secret = member(cloud, "bob")
    private = alice.create_instance(name="secret", kernel=kernel, memory_mib=64)
    public = alice.create_instance(name="shop", kernel=kernel, memory_mib=64, visibility="public")
    for made in (private, public):
        assert alice.wait_job(made["job"]["id"])["status"] == "succeeded"
    private_id, public_id = private["instance"]["id"], public["instance"]["id"]

    assert [i["name"] for i in bob.instances()] == ["shop"]
    with pytest.raises(Exception, match="does not exist"):
        bob.instance(private_id)  # 404: bob may not know it exists
    with pytest.raises(Exception, match="does not exist"):
        bob.job(private["job"]["id"])
    assert bob.instance(public_id)["name"] == "shop"
    http_bob = httpx.Client(base_url=cloud.url, auth=signing.LaminaAuth("bob", bob_secret))
    assert code(http_bob.delete(f"/instances/{public_id}")) == (403, "forbidden")
    assert code(http_bob.post(f"/instances/{public_id}/stop")) == (403, "forbidden")
    assert code(http_bob.delete(f"/instances/{private_id}")) == (404, "not_found")
    assert code(http_bob.get("/hosts")) == (403, "forbidden")
    assert code(http_bob.get("/users")) == (403, "forbidden")

    # Sharing (Glance's image members): read, then operate.
    alice.share("secret", "bob")
    assert bob.instance(private_id)["name"] == "secret"
    assert code(http_bob.post(f"/instances/{private_id}/stop")) == (403, "forbidden")
    alice.share("secret", "bob", "operate")
    assert bob.wait_job(bob.instance_action(private_id, "stop")["id"])["status"] == "succeeded"
    assert code(http_bob.delete(f"/instances/{private_id}")) == (403, "forbidden")
    assert [g["user"] for g in alice.grants("secret")] == ["bob"]
    alice.unshare("secret", "bob")
    assert code(http_bob.get(f"/instances/{private_id}")) == (404, "not_found")
    # Admins see everything.
    assert {i["name"] for i in cloud.client().instances()} == {"secret", "shop"}


def test_quotas_hold_under_concurrent_requests(cloud: Cloud, kernel: str) -> None:
    _, secret = member(cloud, "greedy", instances=3)
    auth = signing.LaminaAuth("greedy", secret)

    def create(i: int) -> httpx.Response:
        body = {"name": f"g{i}", "kernel": kernel, "memory_mib": 64}
        return httpx.post(f"{cloud.url}/instances", json=body, auth=auth, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(create, range(8)))
    assert sorted(r.status_code for r in responses) == [202] * 3 + [413] * 5
    refused = next(r for r in responses if r.status_code == 413).json()
    assert refused["code"] == "quota_exceeded"
    assert refused["message"] == "quota exceeded: instances (limit 3, in use 3, requested 1)"
    greedy = cloud.client("greedy", secret)
    assert len(greedy.instances()) == 3
    cloud.client().update_user("greedy", quotas={"instances": None, "memory_mib": 100})
    response = httpx.post(
        f"{cloud.url}/instances",
        auth=auth,
        json={"name": "big", "kernel": kernel, "memory_mib": 64},
    )
    assert response.status_code == 413 and "memory_mib (limit 100, in use 192" in response.text


def test_web_sessions_need_their_csrf_token(cloud: Cloud, kernel: str) -> None:
    bob, secret = member(cloud, "bob")
    made = bob.create_instance(name="web", kernel=kernel, memory_mib=64)
    bob.wait_job(made["job"]["id"])
    browser = httpx.Client(base_url=cloud.url)
    login = browser.post("/session", data={"access_key": "bob", "secret": secret})
    assert login.status_code == 201
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    csrf = login.json()["session"]["csrf_token"]
    assert browser.get("/whoami").json()["user"]["authenticated_by"] == "session"
    # A form posted without the token (what a forged cross-site form would send) is refused.
    forged = browser.post("/instances/web/stop", data={"confirm": "yes"})
    assert code(forged) == (403, "csrf_failed")
    assert bob.instance("web")["status"] == "running"
    posted = browser.post("/instances/web/stop", data={"csrf_token": csrf})
    assert posted.status_code == 202
    assert code(browser.delete("/session")) == (403, "csrf_failed")
    assert browser.delete("/session", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert code(browser.get("/whoami"))[0] == 403


def test_repeated_failed_logins_lock_out(make_cloud, kernel: str) -> None:  # type: ignore[no-untyped-def]
    from clouds import add_host

    cloud = make_cloud(
        LAMINA_IDENTITY__LOCKOUT_THRESHOLD="3", LAMINA_IDENTITY__LOCKOUT_SECONDS="60"
    )
    cloud.start_manager()
    add_host(cloud, "h1")
    _, secret = member(cloud, "eve")
    for _ in range(3):
        wrong = httpx.post(f"{cloud.url}/session", json={"access_key": "eve", "secret": "guess"})
        assert code(wrong) == (403, "auth_login")
    locked = httpx.post(f"{cloud.url}/session", json={"access_key": "eve", "secret": secret})
    assert code(locked) == (429, "too_many_requests")
    assert "try again in" in locked.json()["message"]
    # Unknown users get the same answers, so logins do not reveal who exists.
    ghost = httpx.post(f"{cloud.url}/session", json={"access_key": "ghost", "secret": "x"})
    assert code(ghost) == (403, "auth_login")
