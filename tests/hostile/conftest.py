"""The hostile suite's cloud: a real manager with one host (libvirt's test driver), a member
besides the administrator, and the OpenAPI document, on each database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from clouds import add_host
from harness import Cloud


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def fuzz_cloud(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cloud, dict[str, Any]]]:
    """A cloud on each database: PostgreSQL refuses what SQLite takes (NUL in text)."""
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database("fuzz")
    cloud = Cloud(tmp_path_factory.mktemp("fuzz"), url)
    cloud.start_manager()
    add_host(cloud, "h1")
    member = cloud.client().add_user("mallory", "mallory@example.com")
    with httpx.Client(base_url=cloud.url, auth=cloud.auth, timeout=60) as http:
        document = http.get("/openapi.json").raise_for_status().json()
    yield cloud, {"document": document, "member": ("mallory", member["key"]["secret"])}
    cloud.stop()
