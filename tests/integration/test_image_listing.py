"""The brief image listing the database builds equals ``describe(brief=True)`` of the full
listing, for every filter, sort, direction and page, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from lamina.db import Database
from lamina.db.types import utcnow
from lamina.identity.models import User
from lamina.identity.principal import Principal
from lamina.images.models import Image
from lamina.images.service import brief_listing, describe, list_images

pytestmark = pytest.mark.integration
ADMIN = Principal("admin-id", "admin", "admin")
BOB = Principal("bob-id", "bob", "member")


@pytest.fixture
def filled(db: Database) -> Database:
    start = utcnow()
    with db.write() as s:
        s.add(User(id="bob-id", access_key="bob", email="bob@example.com"))
        for i in range(30):
            s.add(
                Image(
                    id=f"{i:08d}-0000-0000-0000-000000000000",
                    name=f"img{i % 7}",
                    architecture=("x86_64", "aarch64", None)[i % 3],
                    access=("public", "private")[i % 2],
                    status=("available", "locked")[i % 2],
                    size=i * 1000 if i % 2 == 0 else None,
                    format=("iso", "qcow2", "raw")[i % 3],
                    store="file",
                    owner="bob-id" if i % 5 == 0 else "admin-id",
                    others={"os": ("debian", "fedora")[i % 2]},
                    created_at=start + timedelta(seconds=i // 2),
                )
            )
    return db


def both(db: Database, who: Principal, **query: Any) -> tuple[Any, Any]:
    with db.read() as s:
        built = brief_listing(s, who, **query)
        full = [describe(i, "", brief=True) for i in list_images(s, who, **query)]
    return (json.loads(built)["images"] if built else []), full


@pytest.mark.parametrize("who", [ADMIN, BOB], ids=["admin", "member"])
@pytest.mark.parametrize(
    "query",
    [
        {"filters": {}},
        {"filters": {"format": "iso"}},
        {"filters": {"os": "debian"}},
        {"filters": {"name": "img3"}, "sort": "size", "direction": "desc"},
        {"filters": {}, "sort": "name", "direction": "desc", "limit": 7},
        {"filters": {}, "sort": "architecture"},
        {"filters": {"status": "locked"}, "sort": "created_at"},
    ],
)
def test_built_listing_matches_describe(
    filled: Database, who: Principal, query: dict[str, Any]
) -> None:
    built, full = both(filled, who, **query)
    assert built == full
    assert built or query["filters"]


def test_pages_follow_each_other(filled: Database) -> None:
    seen, marker = [], None
    while True:
        page, full = both(filled, ADMIN, filters={}, sort="name", limit=4, marker=marker)
        assert page == full
        if not page:
            break
        seen += page
        marker = page[-1]["id"]
    assert seen == both(filled, ADMIN, filters={}, sort="name")[0]


def test_nothing_found_is_none(filled: Database) -> None:
    with filled.read() as s:
        assert brief_listing(s, ADMIN, filters={"name": "nope"}) is None
