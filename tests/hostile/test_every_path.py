"""Every operation of the OpenAPI document, sent what no schema describes: NUL and
non-ASCII in query names and values and in path parameters, an unknown query parameter. On
both databases (PostgreSQL refuses NUL in text where SQLite takes it), the answer must be a
refusal with Lamina's envelope, never a server error or a dropped connection."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from harness import Cloud

pytestmark = pytest.mark.integration

PROBES = ("a%00=1", "name=%00x", "owner=%00", "status=%C3%A9%00", "limit=%00", "x=%FF%FE")
PATH_VALUES = ("%00", "a%00b", "%FF", "..%2F..%2Fetc%2Fpasswd")


def _paths(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "head", "delete", "post", "put", "patch")
    ]


def _envelope_or_fine(response: httpx.Response) -> str | None:
    """What is wrong with ``response``, or None."""
    if response.status_code >= 500:
        return f"{response.status_code} {response.text[:200]}"
    if response.status_code >= 400 and response.request.method != "HEAD":
        try:
            body = response.json()
        except ValueError:
            return f"{response.status_code} without the JSON envelope: {response.text[:200]}"
        if not isinstance(body, dict) or "code" not in body:
            return f"{response.status_code} without a code: {response.text[:200]}"
    return None


def test_nul_and_junk_everywhere(fuzz_cloud: tuple[Cloud, dict[str, Any]]) -> None:
    cloud, facts = fuzz_cloud
    bad: list[str] = []
    with httpx.Client(base_url=cloud.url, auth=cloud.auth, timeout=60) as http:
        for method, path in _paths(facts["document"]):
            if method == "DELETE" and "{" not in path:
                continue  # DELETE /users, /session: whole-collection actions, no parameter
            for value in PATH_VALUES:
                concrete = re.sub(r"\{[^}]+\}", value, path)
                for query in ("",) + PROBES:
                    if query and method not in ("GET", "HEAD"):
                        continue
                    url = concrete + (f"?{query}" if query else "")
                    try:
                        response = http.request(method, url, **_body(method))
                    except httpx.TransportError as exc:
                        bad.append(f"{method} {url}: connection failed ({exc!r})")
                        continue
                    problem = _envelope_or_fine(response)
                    if problem:
                        bad.append(f"{method} {url}: {problem}")
                if "{" not in path:
                    break  # no parameter: the path is the same for every value
    assert not bad, f"{len(bad)} bad answers:\n" + "\n".join(bad[:60])


def _body(method: str) -> dict[str, Any]:
    return {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
