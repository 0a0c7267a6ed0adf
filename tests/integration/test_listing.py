"""The brief listing the database builds is ``describe`` cut to its fields, in the same order
and with the same filters and pages as the full listing, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from lamina.compute.instances import describe, list_instances
from lamina.compute.listing import BRIEF, brief_listing
from lamina.compute.models import Host, Instance
from lamina.db import Database
from lamina.db.types import utcnow
from lamina.errors import InvalidRequest
from lamina.identity.models import Grant, User
from lamina.identity.principal import Principal

pytestmark = pytest.mark.integration


@pytest.fixture
def filled(db: Database) -> Database:
    start = utcnow()
    with db.write() as s:
        s.add(Host(id="up", name="h-up", address="a:1", status="up"))
        s.add(Host(id="down", name="h-down", address="b:1", status="down"))
        for i in range(25):
            s.add(
                Instance(
                    id=f"{i:08d}-0000-0000-0000-000000000000",
                    name=f"vm{i}",
                    host_id="down" if i % 4 == 0 else "up",
                    vcpus=1 + i % 3,
                    memory_mib=64,
                    status=("running", "stopped", "error", "deleted", "paused")[i % 5],
                    # Pairs share a creation time, so the id must break the tie.
                    created_at=start + timedelta(seconds=i // 2),
                )
            )
        s.add(
            Instance(
                name="homeless",
                vcpus=1,
                memory_mib=64,
                status="error",
                created_at=start + timedelta(minutes=5),
            )
        )
    return db


ADMIN = Principal("admin-id", "admin", "admin")
ALICE = Principal("alice-id", "alice", "member")


def expected(db: Database, who: Principal = ADMIN, **filters: Any) -> list[dict[str, object]]:
    with db.read() as s:
        hosts = {h.id: h for h in s.query(Host)}
        return [
            {k: describe(i, hosts.get(i.host_id or ""))[k] for k in BRIEF}
            for i in list_instances(s, who=who, **filters)
        ]


def brief(db: Database, who: Principal = ADMIN, **filters: Any) -> list[dict[str, object]]:
    with db.read() as s:
        return list(json.loads(brief_listing(s, who, **filters))["instances"])


def test_brief_is_describe_cut_short(filled: Database) -> None:
    everything = brief(filled)
    assert everything == expected(filled)
    assert len(everything) == 26 - 5  # five of the 25 were deleted
    assert {r["status"] for r in everything if r["host"] == "h-down"} <= {"unknown", "error"}
    assert everything[-1] == {
        "id": everything[-1]["id"],
        "name": "homeless",
        "status": "error",
        "host": None,
        "vcpus": 1,
        "memory_mib": 64,
    }


@pytest.mark.parametrize(
    "filters", [{"status": "stopped"}, {"host": "h-up"}, {"host": "down"}, {"status": "deleted"}]
)
def test_filters_match(filled: Database, filters: dict[str, str]) -> None:
    assert brief(filled, **filters) == expected(filled, **filters)
    assert brief(filled, **filters)


def test_pages_follow_each_other(filled: Database) -> None:
    pages, marker = [], None
    while True:
        page = brief(filled, limit=3, marker=marker)
        full = expected(filled, limit=3, marker=marker)
        assert page == full
        if not page:
            break
        pages.extend(page)
        marker = page[-1]["id"]
    assert pages == brief(filled)


def test_an_unknown_marker_is_refused(filled: Database) -> None:
    with pytest.raises(InvalidRequest, match="not an instance id"):
        brief(filled, marker="nope")
    with filled.read() as s, pytest.raises(InvalidRequest):
        list_instances(s, marker="nope")


def test_an_empty_listing(db: Database) -> None:
    assert brief(db) == []


def test_members_see_their_own_public_and_granted_instances(filled: Database) -> None:
    with filled.write() as s:
        s.add(User(id="alice-id", access_key="alice", email="a@example.com"))
        s.flush()
        mine = s.scalars(select(Instance).where(Instance.name == "vm1")).one()
        mine.owner = "alice-id"
        s.scalars(select(Instance).where(Instance.name == "vm2")).one().visibility = "public"
        shared = s.scalars(select(Instance).where(Instance.name == "vm6")).one()
        s.add(Grant(resource_type="instance", resource_id=shared.id, user_id="alice-id"))
    seen = brief(filled, ALICE)
    assert [r["name"] for r in seen] == ["vm1", "vm2", "vm6"]
    assert seen == expected(filled, ALICE)
    hidden = brief(filled)[0]["id"]  # vm0: neither hers, public nor shared
    with pytest.raises(InvalidRequest, match="not an instance id"):
        brief(filled, ALICE, marker=hidden)  # a marker does not reveal what she cannot see
