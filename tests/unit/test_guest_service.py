"""The configuration service: instance tokens, the rule that an instance asks only about
itself, its JSON routes through the real app, and XML-RPC parsed without entity expansion.
The full path (guest -> host relay -> manager) runs in tests/integration/test_network_guests.py."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_networks import ALICE, make_instance, make_network, svc  # noqa: F401 - fixture

from lamina.api.app import create_app
from lamina.compute.lifecycle import NicRequest
from lamina.compute.models import Instance
from lamina.errors import AuthenticationFailed, InvalidRequest
from lamina.guest.token import instance_token, token_instance
from lamina.guest.xmlrpc import handle_call, parse_call
from lamina.network.models import Port
from lamina.services import Services


@pytest.fixture
def two(svc: Services) -> tuple[Any, Any]:  # noqa: F811 - the fixture imported above
    make_network(svc)
    a = make_instance(svc, "alpha", [NicRequest("lan")])
    b = make_instance(svc, "beta", [NicRequest("lan")])
    with svc.db.write() as s:
        s.get(Instance, a.id).variables = {"colour": "blue"}  # type: ignore[union-attr]
    return a, b


def test_tokens_name_their_instance_and_cannot_be_forged(svc: Services) -> None:  # noqa: F811
    token = instance_token(svc.box, "i-1")
    assert token_instance(svc.box, token) == "i-1"
    forged = "i-2." + token.partition(".")[2]
    for bad in (forged, token[:-1] + ("0" if token[-1] != "0" else "1"), "nonsense", ""):
        with pytest.raises(AuthenticationFailed):
            token_instance(svc.box, bad)


def test_an_instance_reads_itself_and_is_refused_others(
    svc: Services,  # noqa: F811
    two: tuple[Any, Any],
) -> None:
    a, b = two
    with svc.db.write() as s:
        s.get(Instance, a.id).config = {"motd": "hello"}
    http = TestClient(create_app(svc, background=False))
    bearer = {"Authorization": f"Bearer {instance_token(svc.box, a.id)}"}
    mine = http.get(f"/guest/v1/instances/{a.id}", headers=bearer)
    assert mine.status_code == 200, mine.text
    body = mine.json()["instance"]
    assert body["name"] == "alpha" and body["variables"] == {"colour": "blue"}
    assert body["config"] == {"motd": "hello"}
    assert body["networks"][0]["fqdn"] == "alpha.lan.lamina.internal"
    assert http.get("/guest/v1/instances/self", headers=bearer).json()["instance"]["id"] == a.id

    theirs = http.get(f"/guest/v1/instances/{b.id}", headers=bearer)
    assert theirs.status_code == 403 and "only about itself" in theirs.json()["message"]
    assert http.get(f"/guest/v1/instances/{a.id}").json()["code"] == "auth_missing"
    assert (
        http.get(f"/guest/v1/instances/{a.id}", headers={"Authorization": "Bearer x.y"}).json()[
            "code"
        ]
        == "auth_bad_token"
    )

    # Through a host's relay the guest's address must be the instance's own.
    with svc.db.read() as s:
        ip = s.query(Port).filter(Port.instance_id == a.id).one().ip
    relayed = {**bearer, "X-Lamina-Guest-Address": ip}
    assert http.get("/guest/v1/instances/self", headers=relayed).status_code == 200
    stolen = {**bearer, "X-Lamina-Guest-Address": "10.20.0.250"}
    assert http.get("/guest/v1/instances/self", headers=stolen).status_code == 403

    status = http.put(
        "/guest/v1/instances/self/status", headers=bearer, json={"status": "ok: 3 jobs"}
    )
    assert status.status_code == 200
    with svc.db.read() as s:
        assert s.get(Instance, a.id).guest_status == "ok: 3 jobs"
    scale = http.post(
        "/guest/v1/instances/self/actions", headers=bearer, json={"action": "scale-out"}
    )
    assert scale.status_code == 501 and "scaling group" in scale.json()["message"]
    unknown = http.post("/guest/v1/instances/self/actions", headers=bearer, json={"action": "fly"})
    assert unknown.status_code == 400


def _call(services: Services, method: str, *params: Any, address: str | None = None) -> Any:
    answer = handle_call(services, xmlrpc.client.dumps(params, method).encode(), address)
    return xmlrpc.client.loads(answer)[0][0]


def test_xmlrpc_answers_the_same_rules(svc: Services, two: tuple[Any, Any]) -> None:  # noqa: F811
    a, b = two
    token = instance_token(svc.box, a.id)
    assert _call(svc, "lamina.get_variables", token, "self") == {"colour": "blue"}
    assert _call(svc, "lamina.get_instance", token, a.id)["name"] == "alpha"
    assert _call(svc, "lamina.report_status", token, "self", "busy") is True
    with pytest.raises(xmlrpc.client.Fault) as refused:
        _call(svc, "lamina.get_instance", token, b.id)
    assert refused.value.faultCode == 403
    with pytest.raises(xmlrpc.client.Fault) as unknown:
        _call(svc, "lamina.nope", token, "self")
    assert unknown.value.faultCode == 400
    assert "lamina.get_config" in _call(svc, "system.listMethods")


@pytest.mark.parametrize(
    "body",
    [
        # Billion laughs: entities are never expanded.
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b"<methodCall><methodName>&b;</methodName></methodCall>",
        # An external entity: never fetched.
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<methodCall><methodName>x</methodName><params><param><value>&x;</value></param>"
        b"</params></methodCall>",
        b"<methodCall><methodName>x</methodName>",
        b"not xml at all",
        b"<methodResponse><params/></methodResponse>",
        b"<methodCall>" + b"x" * 70000 + b"</methodCall>",
    ],
)
def test_hostile_xmlrpc_is_refused(svc: Services, body: bytes) -> None:  # noqa: F811
    with pytest.raises(InvalidRequest):
        parse_call(body)
    with pytest.raises(xmlrpc.client.Fault) as refused:
        xmlrpc.client.loads(handle_call(svc, body, None))
    assert refused.value.faultCode == 400
