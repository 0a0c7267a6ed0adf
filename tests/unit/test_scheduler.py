"""Placement: the policies (spread, pack), groups spread over hosts, excluded, disabled, down,
full and unknown hosts, and the check of a migration's destination."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from lamina.compute.hosts import disable_host, enable_host
from lamina.compute.models import Host, Instance
from lamina.compute.scheduler import check_destination, place
from lamina.config import ComputeSettings
from lamina.db import Database
from lamina.db.types import utcnow
from lamina.errors import HostFull, InvalidRequest, InvalidState, NoCapacity, NotFound
from lamina.jobs.models import Job

CFG = ComputeSettings(cpu_allocation_ratio=1.0)
PACK = ComputeSettings(cpu_allocation_ratio=1.0, scheduler="pack")


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


def run(s: Session, host: str, memory_mib: int = 256, **kw: str) -> Instance:
    instance = Instance(
        name=f"i{id(kw)}-{memory_mib}", host_id=host, vcpus=1, memory_mib=memory_mib,
        status="running", owner=kw.pop("owner", "alice"), **kw,
    )  # fmt: skip
    s.add(instance)
    s.flush()
    return instance


def test_spread_takes_the_roomiest_host_that_fits(database: Database) -> None:
    with database.write() as s:
        assert place(s, CFG, 1, 512, None).name == "big"
        s.add(Instance(name="hog", host_id="big", vcpus=8, memory_mib=8000, status="running"))
        s.flush()
        assert place(s, CFG, 1, 512, None).name == "small"


def test_pack_takes_the_fullest_host_that_fits(database: Database) -> None:
    with database.write() as s:
        assert place(s, PACK, 1, 512, None).name == "small"
        # Once the small host cannot take it, the big one does.
        assert place(s, PACK, 1, 1024, None).name == "big"
        run(s, "small", 800)
        assert place(s, PACK, 1, 64, None).name == "small"  # 96 MiB left there
        assert place(s, PACK, 1, 128, None).name == "big"


def test_spread_is_the_default_policy() -> None:
    assert ComputeSettings().scheduler == "spread"


def test_a_group_goes_first_where_it_has_fewest_members(database: Database) -> None:
    with database.write() as s:
        run(s, "big", group_name="web")
        # Spread alone would take big (far roomier): the group takes small.
        assert place(s, CFG, 1, 128, None, group="web").name == "small"
        assert place(s, PACK, 1, 128, None, group="web").name == "small"
        run(s, "small", group_name="web")
        # One member each: the policy decides again.
        assert place(s, CFG, 1, 128, None, group="web").name == "big"
        assert place(s, PACK, 1, 128, None, group="web").name == "small"
        # Another group, and deleted members, do not count.
        assert place(s, PACK, 1, 128, None, group="db").name == "small"
        run(s, "small", group_name="db").status = "deleted"
        s.flush()
        assert place(s, CFG, 1, 128, None, group="db").name == "big"


def test_a_group_counts_only_its_owners_members_when_told(database: Database) -> None:
    with database.write() as s:
        run(s, "small", group_name="web", owner="bob")
        assert place(s, PACK, 1, 128, None, group="web").name == "big"
        assert place(s, PACK, 1, 128, None, group="web", owner="bob").name == "big"
        assert place(s, PACK, 1, 128, None, group="web", owner="alice").name == "small"


def test_a_group_never_overrides_room(database: Database) -> None:
    with database.write() as s:
        run(s, "big", group_name="web")
        assert place(s, CFG, 1, 2048, None, group="web").name == "big"  # small cannot


def test_excluded_hosts_are_never_chosen(database: Database) -> None:
    with database.write() as s:
        assert place(s, CFG, 1, 128, None, exclude=("big",)).name == "small"
        with pytest.raises(NoCapacity, match="^no other host is up to run the instance$"):
            place(s, CFG, 1, 128, None, exclude=("big", "small"))
        with pytest.raises(NoCapacity, match="the roomiest, 'small'"):
            place(s, CFG, 1, 2048, None, exclude=("big",))
        with pytest.raises(InvalidRequest, match="host 'big' cannot be chosen here"):
            place(s, CFG, 1, 128, "big", exclude=("big",))


def test_a_disabled_host_gets_no_new_instances(database: Database) -> None:
    with database.write() as s:
        host = disable_host(s, "big", "DIMM to replace")
        assert host.disabled and host.disabled_reason == "DIMM to replace"
        assert place(s, CFG, 1, 128, None).name == "small"
        with pytest.raises(NoCapacity, match="the roomiest, 'small'"):
            place(s, CFG, 1, 2048, None)
        with pytest.raises(InvalidState) as err:
            place(s, CFG, 1, 128, "big")
        assert err.value.message == (
            "host 'big' is disabled (DIMM to replace): it takes no new instances"
        )
        assert err.value.status == 409 and err.value.details["host"] == "big"
        disable_host(s, "small", None)
        with pytest.raises(NoCapacity) as none:
            place(s, CFG, 1, 128, None)
        assert none.value.message == (
            "no host is up to run the instance: 'big', 'small' are disabled"
        )
        enable_host(s, "big")
        assert not s.get(Host, "big").disabled  # type: ignore[union-attr]
        assert place(s, CFG, 1, 128, None).name == "big"
        assert place(s, CFG, 1, 128, "big").name == "big"


def test_disabling_keeps_when_and_takes_the_new_reason(database: Database) -> None:
    with database.write() as s:
        first = disable_host(s, "big", "one").disabled_at
        host = disable_host(s, "big", None)
        assert host.disabled_at == first and host.disabled_reason is None
        with pytest.raises(InvalidRequest, match="printable"):
            disable_host(s, "big", "two\nlines")
        with pytest.raises(NotFound):
            disable_host(s, "nowhere", None)


def test_a_named_host_down_pending_or_unknown(database: Database) -> None:
    with database.write() as s:
        assert place(s, CFG, 1, 256, "small").name == "small"
        with pytest.raises(InvalidState, match="^host 'dead' is down .*: it takes no new"):
            place(s, CFG, 1, 256, "dead")
        disable_host(s, "dead", None)
        with pytest.raises(InvalidState, match="^host 'dead' is down .* and disabled: it"):
            place(s, CFG, 1, 256, "dead")
        s.add(Host(id="new", name="new", address="d:1", status="pending"))
        s.flush()
        with pytest.raises(InvalidState, match="pending .*not enrolled"):
            place(s, CFG, 1, 256, "new")
        with pytest.raises(NotFound, match="host 'nowhere' does not exist") as err:
            place(s, CFG, 1, 256, "nowhere")
        assert err.value.status == 404


def test_a_named_host_that_is_full(database: Database) -> None:
    with database.write() as s:
        run(s, "small", 512)
        with pytest.raises(HostFull) as err:
            place(s, CFG, 2, 256, "small")
    assert err.value.message == (
        "host 'small' has no room for 2 vCPU(s) and 256 MiB: it has 1 vCPU(s) and 384 MiB free"
    )
    assert err.value.status == 409 and err.value.code == "host_full"
    assert isinstance(err.value, NoCapacity)  # what callers catching NoCapacity expect
    assert err.value.details["memory_free_mib"] == 384


def test_deleted_instances_free_their_room(database: Database) -> None:
    with database.write() as s:
        s.add(Instance(name="gone", host_id="big", vcpus=8, memory_mib=8000, status="deleted"))
        s.flush()
        assert place(s, CFG, 4, 4096, None).name == "big"


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
    with db.write() as s, pytest.raises(NoCapacity, match="^no host is up to run the instance$"):
        place(s, CFG, 1, 1, None)


def test_moves_under_way_count_on_their_destination(database: Database) -> None:
    with database.write() as s:
        moving = run(s, "big", 768)
        job = Job(
            kind="instance.migrate", status="running", target_type="instance",
            target_id=moving.id, params={"dest_id": "small"}, deadline=utcnow(),
        )  # fmt: skip
        s.add(job)
        s.flush()
        with pytest.raises(HostFull, match="it has 1 vCPU.* and 128 MiB free"):
            place(s, CFG, 1, 256, "small")
        assert place(s, PACK, 1, 128, None).name == "small"
        # Switched: counted once, where it now is.
        moving.host_id = "small"
        s.flush()
        assert place(s, CFG, 1, 256, "big").name == "big"
        with pytest.raises(HostFull, match="128 MiB free"):
            place(s, CFG, 1, 256, "small")
        moving.host_id, job.status = "big", "failed"  # a move that failed: back where it was
        s.flush()
        assert place(s, CFG, 1, 896, "small").name == "small"


class TestDestination:
    def test_any_other_host(self, database: Database) -> None:
        with database.write() as s:
            instance = run(s, "big")
            assert check_destination(s, CFG, instance, None).name == "small"
            disable_host(s, "small", "maintenance")
            with pytest.raises(NoCapacity) as err:
                check_destination(s, CFG, instance, None)
        assert err.value.message == ("no other host is up to run the instance: 'small' is disabled")
        assert err.value.status == 503

    def test_the_same_host_is_a_bad_request(self, database: Database) -> None:
        with database.write() as s:
            instance = run(s, "big")
            for ref in ("big", instance.host_id):
                with pytest.raises(InvalidRequest) as err:
                    check_destination(s, CFG, instance, ref)
                assert err.value.message == (
                    f"instance {instance.name!r} is already on host 'big': name another host, "
                    "or none to let the scheduler choose"
                )
                assert err.value.status == 400

    def test_a_named_destination(self, database: Database) -> None:
        with database.write() as s:
            instance = run(s, "big", 768)
            assert check_destination(s, CFG, instance, "small").name == "small"
            with pytest.raises(NotFound):
                check_destination(s, CFG, instance, "nowhere")
            with pytest.raises(InvalidState, match="'dead' is down"):
                check_destination(s, CFG, instance, "dead")
            run(s, "small", 512)
            with pytest.raises(HostFull, match="'small' has no room for 1 vCPU.* 768 MiB"):
                check_destination(s, CFG, instance, "small")
            disable_host(s, "small", None)
            with pytest.raises(InvalidState, match="'small' is disabled"):
                check_destination(s, CFG, instance, "small")

    def test_its_group_spreads(self, database: Database) -> None:
        with database.write() as s:
            s.add(Host(id="mid", name="mid", address="e:1", status="up", vcpus=4, memory_mib=4096))
            instance = run(s, "big", group_name="web")
            run(s, "mid", group_name="web")
            # mid is roomier than small, but already has a member of the group.
            assert check_destination(s, CFG, instance, None).name == "small"
