"""The audit trail against a running manager: which requests are recorded, with whom, what
result and from where; who may read it; and that no secret ever reaches it."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from harness import Cloud, wait_until

from lamina.errors import LaminaError
from lamina.identity.signing import LaminaAuth

pytestmark = pytest.mark.integration


def recorded(cloud: Cloud, request_id: str) -> dict[str, Any]:
    """The event of ``request_id``, once the background writer has stored it."""
    with cloud.client() as admin:

        def find() -> dict[str, Any] | None:
            return next((e for e in admin.audit(limit=1000) if e["request_id"] == request_id), None)

        event: dict[str, Any] = wait_until(find, 10, f"the audit event of request {request_id}")
        return event


def add_member(cloud: Cloud, name: str) -> str:
    with cloud.client() as admin:
        return str(admin.add_user(name, f"{name}@example.com")["key"]["secret"])


def test_a_successful_post_is_recorded_with_who_and_where(cloud: Cloud) -> None:
    access_key, _ = cloud.keys()
    with cloud.http as http:
        me = http.get("/whoami").json()["user"]
        answer = http.post("/users", json={"access_key": "dave", "email": "dave@example.com"})
    assert answer.status_code == 201
    request_id = answer.headers["X-Request-Id"]
    assert uuid.UUID(request_id).version == 4
    event = recorded(cloud, request_id)
    assert event["user_id"] == me["id"] and event["access_key"] == access_key
    assert (event["method"], event["path"], event["status"]) == ("POST", "/users", 201)
    assert event["outcome"] is None
    assert event["remote_addr"] == "127.0.0.1"
    assert event["duration_ms"] >= 0
    at = datetime.fromisoformat(event["at"])
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=1)


def test_refused_requests_are_recorded_with_their_error_code(cloud: Cloud) -> None:
    add_member(cloud, "bob")
    # A wrong secret: refused before anyone is authenticated, attributed to the claimed key.
    with httpx.Client(base_url=cloud.url, auth=LaminaAuth("bob", "not-the-secret")) as forged:
        refused = forged.post("/instances", json={"name": "x"})
    assert refused.status_code == 403
    event = recorded(cloud, refused.headers["X-Request-Id"])
    assert event["access_key"] == "bob" and event["user_id"] is None
    assert (event["status"], event["outcome"]) == (403, refused.json()["code"])
    assert event["outcome"].startswith("auth_")

    # A 404, with the query string; asked for XML, the code is still read from the JSON.
    with cloud.http as http:
        missing = http.delete(
            "/instances/nope", params={"force": "true"}, headers={"Accept": "application/xml"}
        )
    assert missing.status_code == 404 and missing.text.startswith("<?xml")
    event = recorded(cloud, missing.headers["X-Request-Id"])
    assert event["path"] == "/instances/nope?force=true"
    assert (event["status"], event["outcome"]) == (404, "not_found")


def test_a_member_refused_by_authorization_is_recorded_as_that_member(cloud: Cloud) -> None:
    secret = add_member(cloud, "bob")
    with httpx.Client(base_url=cloud.url, auth=LaminaAuth("bob", secret)) as bob:
        me = bob.get("/whoami").json()["user"]
        denied = bob.post("/hosts", json={"name": "h2", "address": "127.0.0.1:1"})
    assert denied.status_code == 403
    event = recorded(cloud, denied.headers["X-Request-Id"])
    assert (event["user_id"], event["access_key"]) == (me["id"], "bob")
    assert (event["status"], event["outcome"]) == (403, "forbidden")


def test_gets_are_not_recorded_but_answer_a_request_id(cloud: Cloud) -> None:
    with cloud.http as http:
        read = http.get("/instances")
        health = httpx.get(f"{cloud.url}/health")
        marker = http.delete("/instances/nope")
    assert uuid.UUID(read.headers["X-Request-Id"]) != uuid.UUID(health.headers["X-Request-Id"])
    recorded(cloud, marker.headers["X-Request-Id"])  # the writer has caught up
    ids = {e["request_id"] for e in cloud.client().audit(limit=1000)}
    assert read.headers["X-Request-Id"] not in ids
    assert health.headers["X-Request-Id"] not in ids
    assert {e["method"] for e in cloud.client().audit(limit=1000)} <= {"POST", "PUT", "DELETE"}


def test_a_login_attempt_is_recorded_without_its_body(cloud: Cloud) -> None:
    secret = add_member(cloud, "bob")
    failed = httpx.post(f"{cloud.url}/session", json={"access_key": "bob", "secret": "wrong"})
    assert failed.status_code == 403
    event = recorded(cloud, failed.headers["X-Request-Id"])
    assert (event["method"], event["path"], event["status"]) == ("POST", "/session", 403)
    assert event["outcome"] == failed.json()["code"]
    logged_in = httpx.post(f"{cloud.url}/session", json={"access_key": "bob", "secret": secret})
    assert recorded(cloud, logged_in.headers["X-Request-Id"])["status"] == 201


def test_the_cli_filters_by_user_and_time(cloud: Cloud) -> None:
    secret = add_member(cloud, "bob")
    with cloud.client("bob", secret) as bob, pytest.raises(LaminaError):
        bob.delete_instance("nope")
    wait_until(lambda: cloud.client().audit(user="bob"), 10, "bob's request recorded")

    mine = json.loads(cloud.cli("--json", "audit", "list", "--user", "bob").stdout)
    assert [(e["access_key"], e["method"], e["path"]) for e in mine] == [
        ("bob", "DELETE", "/instances/nope")
    ]
    everyone = json.loads(cloud.cli("audit", "list", "--since", "1h", "--json").stdout)
    assert {e["access_key"] for e in everyone} >= {"bob", cloud.keys()[0]}
    assert all(a["at"] >= b["at"] for a, b in zip(everyone, everyone[1:], strict=False))
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert json.loads(cloud.cli("--json", "audit", "list", "--since", future).stdout) == []
    assert json.loads(cloud.cli("--json", "audit", "list", "--until", "1h").stdout) == []
    limited = json.loads(cloud.cli("--json", "audit", "list", "-n", "1", "-m", "delete").stdout)
    assert [e["method"] for e in limited] == ["DELETE"]

    shown = cloud.cli("audit", "list", "--user", "bob").stdout
    assert shown.splitlines()[0].split() == [
        "AT",
        "ACCESS_KEY",
        "METHOD",
        "PATH",
        "STATUS",
        "OUTCOME",
        "REMOTE_ADDR",
    ]
    assert "/instances/nope" in shown and "not_found" in shown and "127.0.0.1" in shown

    bad = cloud.cli("audit", "list", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "since" in bad.stderr and "1h" in bad.stderr


def test_the_api_refuses_bad_filters(cloud: Cloud) -> None:
    with cloud.http as http:
        for params in ({"since": "soon"}, {"until": "5 parsecs"}, {"method": "GET"}):
            answer = http.get("/audit", params=params)
            assert answer.status_code == 400, params
            assert answer.json()["code"] == "invalid_request"
        assert http.get("/audit", params={"limit": 0}).status_code == 400
        assert http.get("/audit", params={"limit": 1001}).status_code == 400


def test_members_may_not_read_the_audit_trail(cloud: Cloud) -> None:
    secret = add_member(cloud, "bob")
    with httpx.Client(base_url=cloud.url, auth=LaminaAuth("bob", secret)) as bob:
        answer = bob.get("/audit")
    assert answer.status_code == 403 and answer.json()["code"] == "forbidden"
    with cloud.client("bob", secret) as bob_client, pytest.raises(LaminaError) as refused:
        bob_client.audit()
    assert refused.value.status == 403


def test_no_secret_reaches_the_audit_table(cloud: Cloud) -> None:
    admin_key, admin_secret = cloud.keys()
    with cloud.http as http:
        created = http.post("/users", json={"access_key": "carol", "email": "carol@example.com"})
        secret = created.json()["key"]["secret"]
        rotated = http.post("/users/carol/keys").json()["key"]["secret"]
        http.put("/users/carol", json={"password": "correct horse battery"})
        signature = created.request.headers["Authorization"].rpartition(":")[2]
    login = httpx.post(f"{cloud.url}/session", json={"access_key": "carol", "secret": secret})
    assert login.status_code == 201
    # A session cookie and CSRF token on a state-changing request.
    csrf = login.json()["session"]["csrf_token"]
    logout = httpx.delete(
        f"{cloud.url}/session",
        cookies=login.cookies,
        headers={"X-CSRF-Token": csrf},
    )
    recorded(cloud, logout.headers["X-Request-Id"])

    with sqlite3.connect(cloud.root / "manager" / "lamina.db") as conn:
        table = "\n".join(line for line in conn.iterdump() if "audit_events" in line)
    assert "INSERT INTO" in table and "carol" in table
    for value in (secret, rotated, admin_secret, signature, csrf, "correct horse battery"):
        assert value not in table
    for value in login.cookies.values():
        assert value not in table
    assert admin_key in table
