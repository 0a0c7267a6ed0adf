"""Content negotiation for every endpoint at once (VISOR section 4.2.4): handlers produce
JSON; when the client prefers ``application/xml`` this middleware turns the JSON body into
XML. One middleware, not per endpoint."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree as ET

from starlette.types import ASGIApp, Message, Receive, Scope, Send

XML = "application/xml"
PLURALS = {"entries": "entry", "addresses": "address", "capabilities": "capability"}


def wants_xml(accept: str) -> bool:
    """True when the Accept header ranks XML above JSON."""
    best: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        best[media.lower()] = max(q, best.get(media.lower(), 0.0))
    xml = max(best.get(XML, 0.0), best.get("text/xml", 0.0))
    json_q = max(best.get("application/json", 0.0), best.get("*/*", 0.0) * 0.99)
    return xml > 0 and xml >= json_q


def singular(name: str) -> str:
    if name in PLURALS:
        return PLURALS[name]
    return name[:-1] if name.endswith("s") and len(name) > 1 else "item"


def to_xml(data: Any) -> bytes:
    if isinstance(data, dict) and "code" in data and "message" in data:
        root = ET.Element("error")
        _fill(root, data)
    elif isinstance(data, dict) and len(data) == 1:
        name, value = next(iter(data.items()))
        root = ET.Element(name)
        _fill(root, value, singular(name))
    else:
        root = ET.Element("response")
        _fill(root, data)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _fill(element: ET.Element, value: Any, item_name: str = "item") -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            child = ET.SubElement(element, _tag(str(key)))
            _fill(child, sub, singular(str(key)))
    elif isinstance(value, list):
        for sub in value:
            _fill(ET.SubElement(element, item_name), sub)
    elif value is None:
        element.set("nil", "true")
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    else:
        element.text = str(value)


def _tag(key: str) -> str:
    tag = "".join(c if c.isalnum() or c in "_-." else "_" for c in key)
    return tag if tag and (tag[0].isalpha() or tag[0] == "_") else f"_{tag}"


class NegotiationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = dict(scope["headers"]).get(b"accept", b"").decode("latin-1")
        if not accept or not wants_xml(accept):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        passthrough = False

        async def capture(message: Message) -> None:
            nonlocal start, passthrough
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                kind = headers.get(b"content-type", b"").split(b";")[0]
                if kind != b"application/json":
                    passthrough = True
                    await send(message)
                    return
                start = message
                return
            if passthrough or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            out = to_xml(json.loads(body)) if body else b""
            kept = [
                (k, v)
                for k, v in start.get("headers", [])
                if k not in (b"content-type", b"content-length")
            ]
            kept += [
                (b"content-type", b"application/xml; charset=utf-8"),
                (b"content-length", str(len(out)).encode()),
            ]
            await send({**start, "headers": kept})
            await send({"type": "http.response.body", "body": out})

        await self.app(scope, receive, capture)
