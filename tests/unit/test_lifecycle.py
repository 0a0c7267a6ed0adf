"""The instance jobs as the manager wires them: every domain's steps in their places.

A job's steps are stored by name and a job interrupted by a restart resumes by them, so the
names, their order and their undos must not change when a domain moves its steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import bare_services

from lamina.compute.lifecycle import InstanceLifecycle, NicRequest, lifecycle_of
from lamina.errors import ConfigError
from lamina.jobs.kinds import Step
from lamina.services import Services


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
