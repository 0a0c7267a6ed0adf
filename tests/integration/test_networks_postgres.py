"""Addresses allocated by concurrent requests on PostgreSQL, where two transactions can
choose the same free address at once: the unique key refuses the second, which chooses
again, so every instance gets an address and no two the same. (Creating instances takes the
scheduler's host locks first, which orders most of them; the second test makes two
transactions choose together.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness import bare_services

from lamina.compute import instances
from lamina.compute.boot import BootSource, BootSources
from lamina.compute.lifecycle import NicRequest
from lamina.compute.models import Host, Instance
from lamina.identity.principal import Principal
from lamina.network import addresses, service
from lamina.network.lifecycle import attach_nics
from lamina.network.models import Network, Port

pytestmark = pytest.mark.integration
ADMIN = Principal("u-admin", "admin", "admin")


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[Any]:
    services = bare_services(tmp_path, monkeypatch, database={"url": pg_url})
    with services.db.write() as s:
        for hid, name in (("h-1", "one"), ("h-2", "two")):
            s.add(Host(id=hid, name=name, address=f"127.0.0.1:{7000 + len(name)}",
                       status="up", cert_fingerprint=name, vcpus=64, memory_mib=65536))  # fmt: skip
    service.create_network(services, ADMIN, name="lan", cidr="10.30.0.0/24", visibility="public")
    yield services
    services.close()


def test_concurrent_instances_get_distinct_addresses(svc: Any) -> None:
    def create(i: int) -> str:
        who = Principal(f"u-{i}", f"user{i}", "member")
        with svc.db.write() as s:
            instance, _ = instances.create_instance(
                s, svc.jobs, svc.settings.compute, name=f"vm{i}", vcpus=1, memory_mib=64,
                boot=BootSources(BootSource("/boot/k")), who=who,
                attach=attach_nics(who, [NicRequest("lan")], ""),
            )  # fmt: skip
            return instance.id

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(create, range(16)))
    with svc.db.read() as s:
        ports = list(s.query(Port).filter(Port.network_id.is_not(None)))
    guests = sorted(p.ip for p in ports if p.instance_id in made)
    assert len(guests) == 16 and len(set(guests)) == 16
    hosts = {p.host_id: p.ip for p in ports if p.host_id}
    # Every host answers its guests on the gateway (the unique key is the guests' only).
    assert sorted(hosts) == ["h-1", "h-2"] and set(hosts.values()) == {"10.30.0.1"}


def test_two_transactions_choosing_one_address(svc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    for i in range(2):
        with svc.db.write() as s:
            instance, _ = instances.create_instance(
                s, svc.jobs, svc.settings.compute, name=f"race{i}", vcpus=1, memory_mib=64,
                boot=BootSources(BootSource("/boot/k")), host="one", who=ADMIN,
                attach=attach_nics(ADMIN, [], ""),
            )  # fmt: skip
            made.append(instance.id)
    with svc.db.write() as s:  # the host's service address first: only guests race below
        service.service_port(s, s.get(Network, _lan(s)), "h-1")  # type: ignore[arg-type]
    both = threading.Barrier(2)
    chosen: list[str] = []
    real_first_free = addresses.first_free

    def first_free_together(*args: Any, **kwargs: Any) -> str:
        address = real_first_free(*args, **kwargs)
        chosen.append(address)
        if len(chosen) <= 2:
            both.wait(10)  # each transaction has read the same free address
        return address

    monkeypatch.setattr(service, "first_free", first_free_together)

    def connect(instance_id: str) -> str:
        with svc.db.write() as s:
            instance = s.get(Instance, instance_id)
            (port,) = service.connect(s, instance, ADMIN, [NicRequest("lan")])  # type: ignore[arg-type]
            return port.ip

    with ThreadPoolExecutor(2) as pool:
        got = sorted(pool.map(connect, made))
    assert chosen[0] == chosen[1] == "10.30.0.2"  # both chose it
    assert got == ["10.30.0.2", "10.30.0.3"]  # the loser chose again


def _lan(s: Any) -> str:
    return str(s.query(Network).filter(Network.name == "lan").one().id)
