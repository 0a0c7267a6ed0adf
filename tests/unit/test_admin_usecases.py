"""Use cases for administrators check the caller themselves: a front end other than the API
(which refuses them earlier, in the route's dependency) cannot skip the check."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import bare_services

from lamina.appliances import capture, install
from lamina.compute import host_usecases
from lamina.errors import Forbidden
from lamina.identity.principal import Principal
from lamina.services import Services

ALICE = Principal("u-alice", "alice", "member")


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    yield services
    services.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda svc: install.start_install(svc, ALICE, "mail"),
        lambda svc: install.remove_appliance(svc, ALICE, "a-1"),
        lambda svc: capture.start_capture(svc, ALICE, "web", "mine", None),
        lambda svc: host_usecases.add_host(svc, ALICE, "one", "10.0.0.1:7000", None),
        lambda svc: host_usecases.list_hosts(svc, ALICE),
        lambda svc: host_usecases.show_host(svc, ALICE, "one"),
        lambda svc: host_usecases.new_token(svc, ALICE, "one"),
        lambda svc: host_usecases.remove_host(svc, ALICE, "one"),
    ],
)
def test_members_are_refused(svc: Services, call: Callable[[Services], Any]) -> None:
    with pytest.raises(Forbidden, match="administrators"):
        call(svc)
