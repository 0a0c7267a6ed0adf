"""Placement on the roomiest host that fits, a named host, or a clear refusal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lamina.compute.models import Host, Instance
from lamina.compute.scheduler import place
from lamina.config import ComputeSettings
from lamina.db import Database
from lamina.errors import NoCapacity, NotFound

CFG = ComputeSettings(cpu_allocation_ratio=1.0)


@pytest.fixture
def database(sqlite_url: str) -> Iterator[Database]:
    db = Database(sqlite_url)
    with db.write() as s:
        s.add_all(
            [
                Host(
                    id="small", name="small", address="a:1", status="up", vcpus=2, memory_mib=1024
                ),
                Host(id="big", name="big", address="b:1", status="up", vcpus=8, memory_mib=8192),
                Host(
                    id="dead", name="dead", address="c:1", status="down", vcpus=64, memory_mib=65536
                ),
            ]
        )
    yield db
    db.dispose()


def test_the_roomiest_host_that_fits_wins(database: Database) -> None:
    with database.write() as s:
        assert place(s, CFG, 1, 512, None).name == "big"
        s.add(Instance(name="hog", host_id="big", vcpus=8, memory_mib=8000, status="running"))
        s.flush()
        assert place(s, CFG, 1, 512, None).name == "small"


def test_deleted_instances_free_their_room(database: Database) -> None:
    with database.write() as s:
        s.add(Instance(name="gone", host_id="big", vcpus=8, memory_mib=8000, status="deleted"))
        s.flush()
        assert place(s, CFG, 4, 4096, None).name == "big"


def test_a_named_host(database: Database) -> None:
    with database.write() as s:
        assert place(s, CFG, 1, 256, "small").name == "small"
        with pytest.raises(NoCapacity, match="host 'dead' is down"):
            place(s, CFG, 1, 256, "dead")
        with pytest.raises(NotFound):
            place(s, CFG, 1, 256, "nowhere")


def test_nothing_fits(database: Database) -> None:
    with database.write() as s, pytest.raises(NoCapacity) as err:
        place(s, CFG, 16, 512, None)
    assert err.value.message == (
        "no host has room for 16 vCPU(s) and 512 MiB; the roomiest, 'big', has 8 vCPU(s) "
        "and 8064 MiB free"
    )
    assert err.value.status == 503


def test_no_host_up(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    with db.write() as s, pytest.raises(NoCapacity, match="no host is up"):
        place(s, CFG, 1, 1, None)
