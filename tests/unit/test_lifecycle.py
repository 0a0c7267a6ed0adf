"""The instance jobs as the manager wires them: every domain's steps in their places.

A job's steps are stored by name and a job interrupted by a restart resumes by them, so the
names, their order and their undos must not change when a domain moves its steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import bare_services

from lamina.appliances.models import InstalledAppliance
from lamina.compute import usecases
from lamina.compute.lifecycle import InstanceLifecycle, NicRequest, lifecycle_of
from lamina.compute.models import Instance
from lamina.errors import ConfigError
from lamina.identity.models import User
from lamina.identity.principal import Principal
from lamina.jobs.kinds import Step
from lamina.services import Services
from lamina.volumes.models import Attachment, Volume


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    yield services
    services.close()


def steps(svc: Services, kind: str) -> list[tuple[str, str, str | None, float]]:
    return [
        (s.name, s.do.__module__, s.undo.__name__ if s.undo else None, s.timeout)
        for s in svc.jobs.get(kind).steps
    ]


def test_instance_create_steps(svc: Services) -> None:
    assert steps(svc, "instance.create") == [
        ("fetch_boot_files", "lamina.compute.jobs", None, 1800),
        ("create_disk", "lamina.compute.jobs", "remove_disk", 600),
        ("connect_networks", "lamina.network.lifecycle", None, 120),
        ("define_guest", "lamina.compute.jobs", "undefine_guest", 60),
        ("start_guest", "lamina.compute.jobs", "destroy_guest", 60),
    ]


def test_instance_delete_steps(svc: Services) -> None:
    assert steps(svc, "instance.delete") == [
        ("remove_guest", "lamina.compute.jobs", None, 120),
        ("remove_forwards", "lamina.network.lifecycle", None, 120),
        ("release_volumes", "lamina.volumes.jobs", None, 300),
        ("release", "lamina.compute.jobs", None, 60),
        ("remove_checkpoints", "lamina.compute.checkpoint_jobs", None, 60),
        ("disconnect_networks", "lamina.network.lifecycle", None, 60),
    ]


def test_instance_actions_steps(svc: Services) -> None:
    assert [s[0] for s in steps(svc, "instance.start")] == ["refresh_layers", "start"]
    for action in ("stop", "pause", "resume", "reboot"):
        assert [s[0] for s in steps(svc, f"instance.{action}")] == [action]


def test_every_hook_is_wired(svc: Services) -> None:
    lifecycle = lifecycle_of(svc)
    assert lifecycle.nics and lifecycle.layered_boot and lifecycle.provides
    assert lifecycle.attach_nics and lifecycle.nic_views
    assert len(lifecycle.config_files) == len(lifecycle.release) == len(lifecycle.host_up) == 1


def test_a_step_goes_only_where_the_order_has_a_place_for_it() -> None:
    lifecycle = InstanceLifecycle()
    step = Step("connect_networks", lambda ctx: None)
    with pytest.raises(ConfigError, match="no place"):
        lifecycle.contribute("instance.delete", step)
    lifecycle.contribute("instance.create", step)
    with pytest.raises(ConfigError, match="twice"):
        lifecycle.contribute("instance.create", step)


def test_compute_keeps_its_own_steps() -> None:
    lifecycle = InstanceLifecycle()
    lifecycle.contribute("instance.delete", Step("release", lambda ctx: None))
    with pytest.raises(ConfigError, match="compute's own"):
        lifecycle.kind_steps("instance.delete", (Step("release", lambda ctx: None),))


def test_without_a_network_instances_get_no_nics() -> None:
    lifecycle = InstanceLifecycle()
    assert lifecycle.attach(None, [NicRequest("lan")], "default") is None  # type: ignore[arg-type]
    assert lifecycle.nics_by_instance(None, ["i-1"], "lamina.internal") == {}  # type: ignore[arg-type]


def test_every_view_is_wired(svc: Services) -> None:
    assert {v.__module__ for v in lifecycle_of(svc).views} == {
        "lamina.volumes.views",
        "lamina.appliances.views",
    }


def test_an_instance_is_shown_with_its_owner_appliance_and_volumes_by_name(svc: Services) -> None:
    alice = Principal("u-alice", "alice", "member")
    bob = Principal("u-bob", "bob", "member")
    with svc.db.write() as s:
        s.add(User(id=alice.user_id, access_key="alice", email="a@example.org"))
        s.add(User(id=bob.user_id, access_key="bob", email="b@example.org"))
        dns = InstalledAppliance(
            id="app-1", name="dnsserv", version="1.2", kind="traditional", definition=b"",
            status="installed",
        )  # fmt: skip
        vm = Instance(
            id="i-1", name="ns", owner=alice.user_id, visibility="public", status="stopped",
            vcpus=1, memory_mib=64, appliance_id="app-1",
        )  # fmt: skip
        s.add_all([dns, vm])
        s.flush()
        for vid, device in (("vol-b", "vdc"), ("vol-a", "vdb")):
            s.add(Volume(id=vid, owner=alice.user_id, size_bytes=(2 << 20), status="in-use"))
            s.flush()
            s.add(Attachment(volume_id=vid, instance_id="i-1", device=device, status="attached"))
    shown = usecases.show_instance(svc, alice, "ns")["instance"]
    assert shown["owner"] == alice.user_id and shown["owner_name"] == "alice"
    assert shown["appliance"] == {"id": "app-1", "name": "dnsserv", "version": "1.2"}
    assert [(v["device"], v["id"], v["size_bytes"], v["status"]) for v in shown["volumes"]] == [
        ("vdb", "vol-a", 2 << 20, "attached"),
        ("vdc", "vol-b", 2 << 20, "attached"),
    ]
    # A public instance's reader learns neither whose it is nor which volumes it has.
    seen = usecases.show_instance(svc, bob, "ns")["instance"]
    assert seen["owner"] is None and seen["owner_name"] is None
    assert [(v["device"], v["id"]) for v in seen["volumes"]] == [("vdb", None), ("vdc", None)]
    # The detailed listing carries the same fields.
    (listed,) = usecases.list_detail(svc, alice)["instances"]
    assert listed["appliance"]["name"] == "dnsserv" and len(listed["volumes"]) == 2


def test_an_instance_without_appliance_or_volumes_shows_empty_fields(svc: Services) -> None:
    alice = Principal("u-alice", "alice", "member")
    with svc.db.write() as s:
        s.add(Instance(id="i-2", name="bare", owner=alice.user_id, status="stopped", vcpus=1,
                       memory_mib=64, appliance_id="gone"))  # fmt: skip
    shown = usecases.show_instance(svc, alice, "bare")["instance"]
    assert shown["appliance"] is None and shown["appliance_id"] == "gone"
    assert shown["volumes"] == [] and shown["owner_name"] is None  # no such user row


def test_the_cli_and_the_api_filter_on_the_statuses_instances_are_stored_with() -> None:
    from typing import get_args

    from lamina.api.routes.instances import Status
    from lamina.cli.instance import STATUSES
    from lamina.compute.models import INSTANCE_STATUSES

    assert STATUSES == get_args(Status) == INSTANCE_STATUSES
