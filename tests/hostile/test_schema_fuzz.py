"""A bounded schemathesis run over the whole OpenAPI document, with correctly signed requests,
as a member and as an administrator, against a real manager with one host (libvirt's test
driver): no answer may be a server error, and every answer must match the document.

A 501 or 503 is allowed only with the envelope of an error Lamina means (``not_supported``,
``no_capacity``, ``backend_unavailable``): those are answers, not crashes. A 500 never is.

Longer runs: ``LAMINA_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/hostile -k fuzz``
(examples per operation and identity; the default keeps ``make test`` short).
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
import schemathesis
from harness import Cloud
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, response_schema_conformance
from schemathesis.core.failures import FailureGroup

from lamina.identity.signing import LaminaAuth

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("LAMINA_FUZZ_EXAMPLES", "8"))
#: Server errors that are deliberate answers, by envelope code.
MEANT = {501: {"not_supported"}, 503: {"no_capacity", "backend_unavailable"}}
#: Operations left out for the administrator, and why.
ADMIN_SKIPS = {
    ("DELETE", "/users"),  # VISOR's clean: would delete the member the other run signs as
    ("DELETE", "/session"),  # ends web sessions; nothing to find with keys
}


def _meant(response: httpx.Response) -> bool:
    if response.status_code < 500:
        return True
    try:
        code = response.json().get("code")
    except ValueError:
        return False
    return code in MEANT.get(response.status_code, set())


def _fuzz(cloud: Cloud, document: dict[str, Any], auth: LaminaAuth, skips: set[Any]) -> None:
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=cloud.url)
    # NUL characters too: a database that chokes on them must not turn into a 500.
    schema.config.generation.update(allow_x00=True)
    failures: list[str] = []
    with httpx.Client(auth=auth, timeout=60) as http:
        for result in schema.get_all_operations():
            operation = result.ok()
            if (operation.method.upper(), operation.path) not in skips:
                failures += _run(operation, http)
    assert not failures, f"{len(failures)} bad answers:\n\n" + "\n\n".join(failures[:200])


def _run(operation: Any, http: httpx.Client) -> list[str]:
    found: list[str] = []

    cases = st.one_of(operation.as_strategy(mode) for mode in GenerationMode)

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        kwargs = case.as_transport_kwargs()
        headers = {k: str(v) for k, v in (kwargs.get("headers") or {}).items()}
        if kwargs.get("json") is not None:
            headers.setdefault("Content-Type", "application/json")
        try:
            request = _request(http, kwargs, headers)
        except (httpx.InvalidURL, UnicodeEncodeError, ValueError, TypeError):
            return  # a request httpx will not send reaches no server
        response = http.send(request)
        where = f"{request.method} {request.url}"
        if not _meant(response):
            found.append(f"{where} -> {response.status_code}: {response.text[:300]}")
            return
        if case.meta is not None and not case.meta.generation.mode.is_positive:
            return  # invalid input: any refusal that is not a server error will do
        try:
            case.validate_response(
                response, checks=[response_schema_conformance, content_type_conformance]
            )
        except (FailureGroup, AssertionError) as exc:
            found.append(f"{where} -> {response.status_code}: {exc}")

    check()
    return found


def _request(http: httpx.Client, kwargs: dict[str, Any], headers: dict[str, str]) -> Any:
    return http.build_request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers=headers,
        cookies=kwargs.get("cookies"),
        content=_content(kwargs),
    )


def _content(kwargs: dict[str, Any]) -> bytes | None:
    if "json" in kwargs and kwargs["json"] is not None:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    if data is None:
        return None
    return data if isinstance(data, bytes) else str(data).encode()


def test_fuzz_as_member(fuzz_cloud: tuple[Cloud, dict[str, Any]]) -> None:
    cloud, facts = fuzz_cloud
    _fuzz(cloud, facts["document"], LaminaAuth(*facts["member"]), set())


def test_fuzz_as_administrator(fuzz_cloud: tuple[Cloud, dict[str, Any]]) -> None:
    cloud, facts = fuzz_cloud
    _fuzz(cloud, facts["document"], cloud.auth, ADMIN_SKIPS)
