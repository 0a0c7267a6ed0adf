"""Content negotiation: one middleware turns any JSON response into XML on request."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lamina.api.negotiation import NegotiationMiddleware, to_xml, wants_xml
from lamina.errors import NotFound
from lamina.httperrors import install_error_handlers


@pytest.mark.parametrize(
    ("accept", "xml"),
    [
        ("application/xml", True),
        ("text/xml", True),
        ("application/json", False),
        ("*/*", False),
        ("application/json;q=0.5, application/xml", True),
        ("application/xml;q=0.2, application/json", False),
        ("text/html, application/xml;q=0.9, */*;q=0.8", True),
    ],
)
def test_wants_xml(accept: str, xml: bool) -> None:
    assert wants_xml(accept) is xml


def test_to_xml_shapes() -> None:
    doc = ET.fromstring(
        to_xml({"instances": [{"name": "a", "tags": ["x"], "gone": None, "on": True}]})
    )
    assert doc.tag == "instances"
    item = doc.find("instance")
    assert item is not None
    assert item.findtext("name") == "a" and item.findtext("tags/tag") == "x"
    assert item.find("gone").get("nil") == "true"  # type: ignore[union-attr]
    assert item.findtext("on") == "true"
    error = ET.fromstring(to_xml({"code": "not_found", "message": "no"}))
    assert error.tag == "error" and error.findtext("code") == "not_found"


def test_the_middleware_converts_every_json_response_but_nothing_else() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/thing")
    def thing() -> dict[str, object]:
        return {"thing": {"id": 1, "name": "<&>"}}

    @app.get("/missing")
    def missing() -> None:
        raise NotFound("no such thing")

    @app.get("/text")
    def text() -> object:
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse("plain")

    app.add_middleware(NegotiationMiddleware)
    client = TestClient(app)
    assert client.get("/thing").json() == {"thing": {"id": 1, "name": "<&>"}}
    xml = client.get("/thing", headers={"Accept": "application/xml"})
    assert xml.headers["content-type"] == "application/xml; charset=utf-8"
    assert ET.fromstring(xml.content).findtext("name") == "<&>"
    err = client.get("/missing", headers={"Accept": "application/xml"})
    assert err.status_code == 404
    assert ET.fromstring(err.content).findtext("message") == "no such thing"
    assert client.get("/text", headers={"Accept": "application/xml"}).text == "plain"
