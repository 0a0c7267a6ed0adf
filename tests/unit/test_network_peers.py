"""Networks across hosts on the manager: VXLAN ids, each host's tunnel address and peers,
the same state for every host of a network, and an instance's networks and forwards
following it from host to host (the ``before_move``/``after_move`` hooks), on a real SQLite
database with recording agents (unit tests only; real hosts, tunnels and guests are in
tests/integration/test_networks_across_hosts.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import bare_services
from test_networks import ALICE, make_instance, make_network

from lamina.compute.lifecycle import NicRequest, lifecycle_of
from lamina.compute.models import Host, Instance
from lamina.errors import BackendUnavailable, Conflict, Forbidden, InvalidRequest
from lamina.jobs.models import Job
from lamina.network import forwards, service
from lamina.network.lifecycle import abandon_move, finish_move, prepare_move
from lamina.network.models import Port, PortForward
from lamina.network.sync import host_state, tunnel_address
from lamina.services import Services
from lamina.wire.protocol import ForwardInfo, NetworkState
from lamina.wire.protocol import PortForward as ForwardSpec


class Agents:
    """Agents that remember what they were told: network states, forwards made and gone."""

    def __init__(self) -> None:
        self.states: dict[str, NetworkState] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.specs: dict[str, ForwardSpec] = {}
        self.down: set[str] = set()

    def for_host(self, host: Host) -> Any:
        me, name = self, host.name

        class Agent:
            def network_state(self, state: NetworkState) -> list[Any]:
                if name in me.down:
                    raise BackendUnavailable(f"{name} is down")
                me.states[name] = state
                return []

            def forward_create(self, forward: str, spec: ForwardSpec) -> ForwardInfo:
                me.calls.append(("create", name, forward))
                me.specs[forward] = spec
                return ForwardInfo(forward=forward, **spec.model_dump())

            def forward_delete(self, forward: str) -> None:
                me.calls.append(("delete", name, forward))

        return Agent()

    def close(self) -> None:
        pass


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    services.agents = Agents()  # type: ignore[assignment]
    with services.db.write() as s:
        for hid, name, address, tunnel in (
            ("h-1", "one", "10.98.0.11:8776", None),
            ("h-2", "two", "10.98.0.12:8776", None),
            # Known by a loopback address, but its agent names its tunnel address.
            ("h-3", "three", "127.0.0.1:7003", "10.98.0.13"),
        ):
            s.add(Host(id=hid, name=name, address=address, tunnel_address=tunnel, status="up",
                       cert_fingerprint=f"fp-{name}", vcpus=64, memory_mib=64 * 1024))  # fmt: skip
    yield services
    services.close()


def agents(svc: Services) -> Agents:
    found = svc.agents
    assert isinstance(found, Agents)
    return found


def spec_of(svc: Services, host_id: str) -> Any:
    with svc.db.read() as s:
        state = host_state(s, host_id, svc.settings, provides=None)
    return {n.name: n for n in state.networks}


def test_each_network_has_its_own_vni(svc: Services) -> None:
    lan = make_network(svc)
    other = make_network(svc, name="other", cidr="10.21.0.0/24")
    assert lan.vni is not None and other.vni is not None and other.vni > lan.vni
    assert service.show_network(svc, ALICE, "other")["vni"] == other.vni


def test_tunnel_addresses() -> None:
    def host(address: str, tunnel: str | None = None) -> Host:
        return Host(name="h", address=address, tunnel_address=tunnel)

    assert tunnel_address(host("10.98.0.11:8776")) == "10.98.0.11"
    assert tunnel_address(host("127.0.0.1:8776", "10.98.0.13")) == "10.98.0.13"
    # Loopback (hosts on one machine sharing one network), IPv6, unresolvable: no tunnel.
    assert tunnel_address(host("127.0.0.1:8776")) is None
    assert tunnel_address(host("[::1]:8776")) is None
    assert tunnel_address(host("no-such-host.invalid:8776")) is None


def test_every_host_of_a_network_floods_to_the_others(svc: Services) -> None:
    net = make_network(svc)
    make_instance(svc, "a", [NicRequest("lan")], host="one")
    b = make_instance(svc, "b", [NicRequest("lan")], host="two")
    one, two = spec_of(svc, "h-1")["lan"], spec_of(svc, "h-2")["lan"]
    assert (one.vni, one.local, one.peers) == (net.vni, "10.98.0.11", ["10.98.0.12"])
    assert (two.vni, two.local, two.peers) == (net.vni, "10.98.0.12", ["10.98.0.11"])
    # The same service address, the same DHCP entries and zone on both hosts.
    assert one.address == two.address == "10.20.0.1"
    assert one.hosts == two.hosts and one.records == two.records
    assert [h.hostname for h in one.hosts] == ["a", "b"]
    assert spec_of(svc, "h-3") == {}
    # A third host joins: everyone floods to it (its agent's own tunnel address).
    make_instance(svc, "c", [NicRequest("lan")], host="three")
    assert spec_of(svc, "h-1")["lan"].peers == ["10.98.0.12", "10.98.0.13"]
    assert spec_of(svc, "h-3")["lan"].local == "10.98.0.13"
    # b's host leaves the network with b; the others stop flooding to it.
    with svc.db.write() as s:
        state: dict[str, Any] = {}
        instance = s.get(Instance, b.id)
        assert instance is not None
        for release in lifecycle_of(svc).release:
            release(s, instance, state)
    assert set(state["sync_hosts"]) == {"h-1", "h-2", "h-3"}
    assert spec_of(svc, "h-1")["lan"].peers == ["10.98.0.13"]
    assert spec_of(svc, "h-2") == {}


def test_networks_apart_have_apart_vnis_and_peers(svc: Services) -> None:
    make_network(svc)
    make_network(svc, name="other", cidr="10.21.0.0/24")
    make_instance(svc, "a", [NicRequest("lan")], host="one")
    make_instance(svc, "b", [NicRequest("lan")], host="two")
    make_instance(svc, "x", [NicRequest("other")], host="one")
    one = spec_of(svc, "h-1")
    assert one["lan"].vni != one["other"].vni
    assert one["other"].peers == [] and one["lan"].peers == ["10.98.0.12"]
    assert [h.hostname for h in one["other"].hosts] == ["x"]


def _forward(svc: Services, instance: Instance, bind: str, port: int, guest: int) -> str:
    with svc.db.write() as s:
        nic = s.query(Port).filter(Port.instance_id == instance.id).one()
        row = PortForward(instance_id=instance.id, host_id=instance.host_id,
                          network_id=nic.network_id, guest_ip=nic.ip, guest_port=guest,
                          bind=bind, host_port=port, status="active")  # fmt: skip
        s.add(row)
        s.flush()
        return row.id


def _hosts(svc: Services) -> tuple[Host, Host]:
    with svc.db.read() as s:
        one, two = s.get(Host, "h-1"), s.get(Host, "h-2")
        assert one is not None and two is not None
        s.expunge_all()
    return one, two


def test_networks_and_forwards_follow_a_moving_instance(svc: Services) -> None:
    make_network(svc)
    a = make_instance(svc, "a", [NicRequest("lan")], host="one")
    floating = _forward(svc, a, "10.98.0.100", 8080, 80)
    own = _forward(svc, a, "10.98.0.11", 8081, 81)
    local = _forward(svc, a, "127.0.0.1", 8082, 82)
    one, two = _hosts(svc)
    hooks = lifecycle_of(svc)
    assert prepare_move in hooks.before_move and finish_move in hooks.after_move
    assert abandon_move in hooks.move_aborted

    prepare_move(svc, a, one, two)
    # Before the switch the destination has the network with a's DHCP entry and name, and
    # the source floods to it.
    seen = agents(svc).states
    (dest,) = seen["two"].networks
    assert [h.hostname for h in dest.hosts] == ["a"] and dest.peers == ["10.98.0.11"]
    assert seen["one"].networks[0].peers == ["10.98.0.12"]

    with svc.db.write() as s:  # the switch (migration's)
        moved = s.get(Instance, a.id)
        assert moved is not None
        moved.host_id = "h-2"
    agents(svc).calls.clear()
    finish_move(svc, a, one, two)
    calls = agents(svc).calls
    # Made on the destination first, then gone from the source.
    for forward in (floating, own, local):
        assert calls.index(("create", "two", forward)) < calls.index(("delete", "one", forward))
    specs = agents(svc).specs
    assert (specs[floating].bind, specs[floating].host_port) == ("10.98.0.100", 8080)
    assert specs[own].bind == "10.98.0.12"  # the source's own address: the destination's
    assert specs[local].bind == "127.0.0.1"
    with svc.db.read() as s:
        rows = {f.id: f for f in s.query(PortForward)}
        assert {f.host_id for f in rows.values()} == {"h-2"}
        assert {f.status for f in rows.values()} == {"active"}
        # The source carries the network no more; both ends were told at once.
        assert s.query(Port).filter(Port.host_id == "h-1").count() == 0
    assert seen["one"].networks == []
    assert seen["two"].networks[0].peers == []
    # Again (a manager restarted halfway): the same end, published and withdrawn again.
    agents(svc).calls.clear()
    finish_move(svc, a, one, two)
    assert sorted(agents(svc).calls) == sorted(
        [("create", "two", f) for f in (floating, own, local)]
        + [("delete", "one", f) for f in (floating, own, local)]
    )
    assert agents(svc).specs[own].bind == "10.98.0.12"


def test_an_unreachable_host_gets_its_networks_later(svc: Services) -> None:
    make_network(svc)
    a = make_instance(svc, "a", [NicRequest("lan")], host="one")
    make_instance(svc, "c", [NicRequest("lan")], host="three")
    one, two = _hosts(svc)
    agents(svc).down.add("three")
    prepare_move(svc, a, one, two)
    with svc.db.read() as s:
        queued = [j.target_id for j in s.query(Job).filter(Job.kind == "network.sync")]
    assert "h-3" in queued


def test_an_abandoned_move_leaves_the_destination_as_it_was(svc: Services) -> None:
    make_network(svc)
    a = make_instance(svc, "a", [NicRequest("lan")], host="one")
    one, two = _hosts(svc)
    prepare_move(svc, a, one, two)
    abandon_move(svc, a, one, two)
    with svc.db.read() as s:
        assert s.query(Port).filter(Port.host_id == "h-2").count() == 0
        assert s.query(Port).filter(Port.host_id == "h-1").count() == 1
    assert agents(svc).states["two"].networks == []
    assert agents(svc).states["one"].networks[0].peers == []


def test_bind_addresses_of_hosts_and_floating_ones(svc: Services) -> None:
    make_network(svc)
    a = make_instance(svc, "a", [NicRequest("lan")], host="one")
    b = make_instance(svc, "b", [NicRequest("lan")], host="two")

    def expose(instance: Instance, bind: str, port: int) -> None:
        with svc.db.write() as s:
            row = s.get(Instance, instance.id)
            assert row is not None
            forwards.expose(
                s, svc.jobs, row, guest_port=port, host_port=port, bind=bind, may_float=True
            )

    expose(a, "10.98.0.11", 80)  # its host's own
    expose(a, "127.0.0.1", 81)
    expose(a, "10.98.0.200", 82)  # floating: a's from now on
    expose(b, "127.0.0.1", 81)
    with pytest.raises(InvalidRequest, match="host one's own address"):
        expose(b, "10.98.0.11", 83)
    with pytest.raises(InvalidRequest, match="host three's own address"):
        expose(b, "10.98.0.13", 83)  # three's agent's tunnel address
    with pytest.raises(Conflict, match="floating address 10.98.0.200 is a's"):
        expose(b, "10.98.0.200", 84)
    expose(a, "10.98.0.200", 85)  # more of a's ports on it


def test_a_forward_whose_port_is_taken_on_the_destination_does_not_stop_the_move(
    svc: Services,
) -> None:
    make_network(svc)
    a = make_instance(svc, "a", [NicRequest("lan")], host="one")
    b = make_instance(svc, "b", [NicRequest("lan")], host="two")
    mine = _forward(svc, a, "127.0.0.1", 8080, 80)
    _forward(svc, b, "127.0.0.1", 8080, 80)
    one, two = _hosts(svc)
    prepare_move(svc, a, one, two)
    finish_move(svc, a, one, two)
    with svc.db.read() as s:
        row = s.get(PortForward, mine)
        assert row is not None
        assert (row.status, row.error) == ("error", "host port 8080 is taken on host two")
    # Not made on two; gone from one all the same (a is not there any more).
    assert ("create", "two", mine) not in agents(svc).calls
    assert ("delete", "one", mine) in agents(svc).calls


def test_only_administrators_bind_floating_addresses(svc: Services) -> None:
    """A floating address is taken by the host on the data-centre network: a member must not
    make a host claim, say, the manager's address."""
    make_network(svc)
    a = make_instance(svc, "a", [NicRequest("lan")], host="one")
    with svc.db.write() as s:
        row = s.get(Instance, a.id)
        assert row is not None
        with pytest.raises(Forbidden, match="only administrators"):
            forwards.expose(s, svc.jobs, row, guest_port=80, host_port=80, bind="10.98.0.1")
        forwards.expose(s, svc.jobs, row, guest_port=80, host_port=80, bind="10.98.0.11")
