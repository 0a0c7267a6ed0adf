"""Networks on the manager: ranges and addresses checked and allocated, names and records
of the zones, what each host is told, and the release of it all — on a real SQLite
database. The agent is a recording fake (unit tests only); the same pushes reach real
agents, bridges and dnsmasq in tests/integration/test_networks_api.py."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import bare_services

from lamina.appliances.models import InstalledAppliance
from lamina.compute import instances
from lamina.compute.boot import BootSource, BootSources
from lamina.compute.lifecycle import NicRequest, lifecycle_of
from lamina.compute.models import Host, Instance
from lamina.errors import Conflict, Forbidden, InvalidRequest, InvalidState, NotFound
from lamina.identity.principal import Principal
from lamina.jobs.models import Job
from lamina.network import addresses, dns, service
from lamina.network.lifecycle import attach_nics
from lamina.network.models import Network, Port
from lamina.network.sync import host_state, queue_sync
from lamina.services import Services
from lamina.wire.protocol import NetworkState

ALICE = Principal("u-alice", "alice", "member")
BOB = Principal("u-bob", "bob", "member")
ADMIN = Principal("u-admin", "admin", "admin")
SHA = "a" * 64
MAIL_APPLIANCE = f"""<?xml version='1.0'?>
<appliance version="1.0" name="mailserv" kind="application">
  <label>Mail</label><description>A mail sink.</description>
  <version>1.0.0</version><provides>mail</provides>
  <substrate name="lamina-base" />
  <layers>
    <layer format="squashfs" sha256="{SHA}" size="4096" />
  </layers>
</appliance>""".encode()


class Recorder:
    """Agents that remember the network states pushed to them."""

    def __init__(self) -> None:
        self.states: dict[str, NetworkState] = {}

    def for_host(self, host: Host) -> Any:
        recorder = self

        class Agent:
            def network_state(self, state: NetworkState) -> list[Any]:
                recorder.states[host.name] = state
                return []

        return Agent()

    def close(self) -> None:
        pass


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services: Services = bare_services(tmp_path, monkeypatch)
    services.agents = Recorder()  # type: ignore[assignment]
    with services.db.write() as s:
        for hid, name in (("h-1", "one"), ("h-2", "two")):
            s.add(Host(id=hid, name=name, address=f"127.0.0.1:{7000 + len(hid)}", status="up",
                       cert_fingerprint=f"fp-{name}", vcpus=64, memory_mib=64 * 1024))  # fmt: skip
    yield services
    services.close()


def make_network(svc: Services, who: Principal = ALICE, **fields: Any) -> Network:
    values = {"name": "lan", "cidr": "10.20.0.0/24", **fields}
    shown = service.create_network(svc, who, **values)
    with svc.db.read() as s:
        network = s.get(Network, shown["id"])
        assert network is not None
        s.expunge(network)
    return network


def make_instance(
    svc: Services, name: str, nics: list[NicRequest] | None, who: Principal = ALICE,
    host: str | None = None, **fields: Any,
) -> Instance:  # fmt: skip
    with svc.db.write() as s:
        instance, _ = instances.create_instance(
            s, svc.jobs, svc.settings.compute, name=name, vcpus=1, memory_mib=128,
            boot=BootSources(BootSource("/boot/k")), host=host, who=ADMIN if host else who,
            attach=attach_nics(who, nics, svc.settings.network.default_network), **fields,
        )  # fmt: skip
        if host:
            instance.owner = who.user_id
        s.expunge(instance)
    return instance


def ports_of(svc: Services, instance_id: str) -> list[tuple[str, str, int]]:
    with svc.db.read() as s:
        return [
            (p.ip, p.network_id, p.nic)
            for p in s.query(Port).filter(Port.instance_id == instance_id).order_by(Port.nic)
        ]


# -- ranges and addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "says"),
    [
        ("10.0.0.1/24", "host bits set"),
        ("fd00::/64", "only IPv4"),
        ("10.0.0.0/30", "/8 to /29"),
        ("127.0.0.0/8", "loopback"),
        ("banana", "not a network address"),
    ],
)
def test_bad_ranges_are_refused_saying_why(cidr: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        addresses.parse_cidr(cidr)


def test_requested_addresses_are_checked() -> None:
    net = addresses.parse_cidr("10.1.0.0/29")
    assert addresses.check_requested(net, " 10.1.0.6 ") == "10.1.0.6"
    with pytest.raises(InvalidRequest, match="outside"):
        addresses.check_requested(net, "10.1.0.9")
    with pytest.raises(InvalidRequest, match="broadcast"):
        addresses.check_requested(net, "10.1.0.7")
    with pytest.raises(InvalidRequest, match="network address"):
        addresses.check_requested(net, "10.1.0.0")
    with pytest.raises(Conflict, match="gateway"):
        addresses.check_requested(net, "10.1.0.1")
    with pytest.raises(InvalidRequest, match="not an IPv4"):
        addresses.check_requested(net, "10.1.0")


def test_allocation_takes_the_lowest_free_address_and_says_when_full() -> None:
    net = addresses.parse_cidr("10.1.0.0/29")
    assert addresses.first_free(net, []) == "10.1.0.2"
    assert addresses.first_free(net, [], service=True) == "10.1.0.1"
    assert addresses.first_free(net, ["10.1.0.1", "10.1.0.2", "10.1.0.4"]) == "10.1.0.3"
    with pytest.raises(Conflict, match="no free address"):
        addresses.first_free(net, [f"10.1.0.{i}" for i in range(1, 7)])
    mac = addresses.new_mac()
    assert mac.startswith("52:54:00:") and len(mac) == 17


# -- networks --------------------------------------------------------------------------------


def test_network_names_ranges_and_vlans_are_unique(svc: Services) -> None:
    make_network(svc)
    # alice's network is private: bob learns only that the name or range is not free.
    with pytest.raises(Conflict, match="name 'lan' is not available"):
        service.create_network(svc, BOB, name="lan", cidr="10.30.0.0/24")
    with pytest.raises(Conflict, match="not available"):
        service.create_network(svc, BOB, name="other", cidr="10.20.0.128/25")
    with pytest.raises(Conflict, match="already exists"):
        service.create_network(svc, ALICE, name="lan", cidr="10.30.0.0/24")
    with pytest.raises(Conflict, match="overlaps 10.20.0.0/24"):
        service.create_network(svc, ALICE, name="other", cidr="10.20.0.128/25")
    with pytest.raises(Conflict, match="overlaps"):
        service.create_network(svc, ADMIN, name="other", cidr="10.0.0.0/8")
    with pytest.raises(InvalidRequest, match="DNS label"):
        service.create_network(svc, BOB, name="Bad_Name", cidr="10.40.0.0/24")
    with pytest.raises(Forbidden, match="VLAN"):
        service.create_network(svc, BOB, name="tagged", cidr="10.40.0.0/24", vlan=10)
    service.create_network(svc, ADMIN, name="tagged", cidr="10.40.0.0/24", vlan=10)
    with pytest.raises(Conflict, match="VLAN 10"):
        service.create_network(svc, ADMIN, name="tagged2", cidr="10.50.0.0/24", vlan=10)


def test_private_networks_are_invisible_to_others_and_public_ones_attachable(
    svc: Services,
) -> None:
    net = make_network(svc)
    with pytest.raises(NotFound):
        make_instance(svc, "intruder", [NicRequest("lan")], who=BOB)
    with svc.db.write() as s:
        s.get(Network, net.id).visibility = "public"  # type: ignore[union-attr]
    make_instance(svc, "guest", [NicRequest("lan")], who=BOB)
    assert [n["name"] for n in service.list_networks(svc, BOB)] == ["lan"]
    with svc.db.read() as s, pytest.raises(Forbidden):
        service.get_network(s, "lan", BOB, "own")
    with pytest.raises(Forbidden):
        service.update_network(svc, BOB, "lan", description="mine now")


def test_instances_get_addresses_a_host_gets_the_gateway(svc: Services) -> None:
    net = make_network(svc)
    other = make_network(svc, name="back", cidr="10.21.0.0/24", mode="isolated")
    web = make_instance(
        svc, "web", [NicRequest("lan"), NicRequest("back", "10.21.0.50")], host="one"
    )
    db = make_instance(svc, "db", [NicRequest(net.id)], host="one")
    assert ports_of(svc, web.id) == [("10.20.0.2", net.id, 0), ("10.21.0.50", other.id, 1)]
    assert ports_of(svc, db.id) == [("10.20.0.3", net.id, 0)]
    with svc.db.read() as s:
        services = {(p.network_id, p.ip) for p in s.query(Port).filter(Port.host_id.is_not(None))}
        assert services == {(net.id, "10.20.0.1"), (other.id, "10.21.0.1")}
        shown = service.describe_network(s, s.get(Network, net.id), "lamina.internal")  # type: ignore[arg-type]
        assert shown["zone"] == "lan.lamina.internal" and shown["gateway"] == "10.20.0.1"
        assert shown["instances"] == 2 and shown["addresses_free"] == 254 - 3
        nics = service.instance_nics(s, web.id, "lamina.internal")
        assert [n["fqdn"] for n in nics] == ["web.lan.lamina.internal", "web.back.lamina.internal"]


def test_every_host_of_a_network_answers_on_its_gateway(svc: Services) -> None:
    net = make_network(svc)
    make_instance(svc, "a", [NicRequest("lan")], host="one")
    b = make_instance(svc, "b", [NicRequest("lan")], host="two")
    with svc.db.read() as s:
        found = s.query(Port).filter(Port.network_id == net.id, Port.host_id.is_not(None))
        hosts = {p.host_id: p.ip for p in found}
        assert s.query(Port).filter(Port.instance_id == b.id).one().ip == "10.20.0.3"
    assert hosts == {"h-1": "10.20.0.1", "h-2": "10.20.0.1"}
    shown = service.show_network(svc, ALICE, "lan")
    assert (shown["addresses_used"], shown["addresses_free"]) == (3, 251)
    assert shown["hosts"] == ["one", "two"]


@pytest.mark.parametrize(
    ("nics", "error", "says"),
    [
        ([NicRequest("lan", "10.20.0.2")], Conflict, "taken"),
        ([NicRequest("lan", "10.99.0.2")], InvalidRequest, "outside"),
        ([NicRequest("lan", "10.20.0.1")], Conflict, "gateway"),
        ([NicRequest("lan"), NicRequest("lan")], InvalidRequest, "twice"),
        ([NicRequest("nowhere")], NotFound, "does not exist"),
    ],
)
def test_bad_nics_are_refused_and_nothing_is_recorded(
    svc: Services, nics: list[NicRequest], error: type[Exception], says: str
) -> None:
    make_network(svc)
    make_instance(svc, "first", [NicRequest("lan")])
    with pytest.raises(error, match=says):
        make_instance(svc, "second", nics)
    with svc.db.read() as s:
        assert [i.name for i in s.query(Instance)] == ["first"]
        assert s.query(Port).count() == 2  # first's NIC and the host's address


def test_one_name_per_network(svc: Services) -> None:
    make_network(svc, visibility="public")
    make_instance(svc, "web", [NicRequest("lan")])
    with pytest.raises(Conflict, match="name 'web' is taken"):
        make_instance(svc, "web", [NicRequest("lan")], who=BOB)


def test_the_default_network_applies_when_none_is_named(svc: Services) -> None:
    make_instance(svc, "before", None)  # no network called "default" yet: none
    make_network(svc, who=ADMIN, name="default", cidr="10.77.0.0/24", visibility="public")
    joined = make_instance(svc, "after", None, who=BOB)
    alone = make_instance(svc, "alone", [], who=BOB)
    assert ports_of(svc, joined.id)[0][0] == "10.77.0.2"
    assert ports_of(svc, alone.id) == []


def test_release_frees_addresses_and_the_last_one_frees_the_hosts(svc: Services) -> None:
    make_network(svc)
    a = make_instance(svc, "a", [NicRequest("lan")], host="one")
    b = make_instance(svc, "b", [NicRequest("lan")], host="one")
    with svc.db.write() as s:
        assert service.release(s, a.id) == {a.host_id}
    with svc.db.read() as s:
        assert sorted(p.ip for p in s.query(Port)) == ["10.20.0.1", "10.20.0.3"]
    with svc.db.write() as s:
        service.release(s, b.id)
    with svc.db.read() as s:
        assert s.query(Port).count() == 0
    assert ports_of(svc, make_instance(svc, "c", [NicRequest("lan")]).id)[0][0] == "10.20.0.2"


def test_a_network_in_use_cannot_be_deleted(svc: Services) -> None:
    net = make_network(svc)
    make_instance(svc, "web", [NicRequest("lan")])
    with pytest.raises(InvalidState, match="in use by instance.*web"):
        service.delete_network(svc, ALICE, net.id)


# -- DNS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "type_", "value", "expected"),
    [
        ("www", "a", "10.20.0.9", ("www.lan.lamina.internal", "A", "10.20.0.9")),
        ("@", "MX", "5  Mail.Example.org.", ("lan.lamina.internal", "MX", "5 mail.example.org")),
        ("example.org.", "TXT", "v=spf1 -all", ("example.org", "TXT", "v=spf1 -all")),
        ("v6", "AAAA", "fd00::0001", ("v6.lan.lamina.internal", "AAAA", "fd00::1")),
        ("alias", "CNAME", "web", ("alias.lan.lamina.internal", "CNAME", "web")),
        ("_sip._tcp", "SRV", "0 5 5060 sip.lan.lamina.internal",
         ("_sip._tcp.lan.lamina.internal", "SRV", "0 5 5060 sip.lan.lamina.internal")),
    ],
)  # fmt: skip
def test_records_are_normalised(
    name: str, type_: str, value: str, expected: tuple[str, ...]
) -> None:
    got = dns.check_record(name, type_, value, "lan.lamina.internal", "lamina.internal")
    assert (got.name, got.type, got.value) == expected


@pytest.mark.parametrize(
    ("name", "type_", "value", "says"),
    [
        ("www", "A", "fd00::1", "IPv6"),
        ("www", "A", "300.1.1.1", "not an address"),
        ("www", "MX", "mail", "preference"),
        ("www", "MX", "99999 mail", "0 to 65535"),
        ("www", "SRV", "0 5 5060 sip", "_service._tcp"),
        ("www", "TXT", 'say "hi"', "without quotes"),
        ("www", "PTR", "x", "one of A"),
        ("bad..name", "A", "10.0.0.1", "not a valid DNS name"),
        ("lamina.local.", "A", "10.0.0.1", "reserved"),
        ("x.other.lamina.internal.", "A", "10.0.0.1", "not in this network's zone"),
        ("under_score", "A", "10.0.0.1", "only SRV"),
    ],
)
def test_bad_records_are_refused(name: str, type_: str, value: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        dns.check_record(name, type_, value, "lan.lamina.internal", "lamina.internal")


def test_the_zone_has_instances_groups_mail_and_manual_records(svc: Services) -> None:
    net = make_network(svc)
    with svc.db.write() as s:
        s.add(
            InstalledAppliance(
                id="app-mail",
                name="mailserv",
                version="1.0.0",
                kind="application",
                definition=MAIL_APPLIANCE,
                status="installed",
            )  # fmt: skip
        )
    make_instance(svc, "web1", [NicRequest("lan")], host="one", group="web")
    make_instance(svc, "web2", [NicRequest("lan")], host="one", group="web")
    mail = make_instance(svc, "mx1", [NicRequest("lan")], host="one")
    with svc.db.write() as s:
        row = s.get(Instance, mail.id)
        assert row is not None
        row.appliance_id, row.variables = "app-mail", {"domain": "Example.org"}
        network = s.get(Network, net.id)
        assert network is not None
        provides = lifecycle_of(svc).provides

        def add(name: str, type_: str, value: str) -> None:
            dns.add_record(s, network, "lamina.internal", name, type_, value, ALICE,
                           provides=provides)  # fmt: skip

        add("www", "CNAME", "web")
        with pytest.raises(Conflict, match="CNAME"):
            add("www", "A", "10.20.0.9")
        with pytest.raises(Conflict, match="instance's own name"):
            add("web1", "A", "10.20.0.9")
        with pytest.raises(Conflict, match="already exists"):
            add("www", "CNAME", "web")
        shown = dns.listing(s, network, "lamina.internal", provides=provides)
        records = {(r["name"], r["type"], r["value"], r["source"]) for r in shown}
    zone = "lan.lamina.internal"
    assert records == {
        (f"web1.{zone}", "A", "10.20.0.2", "instance"),
        (f"web2.{zone}", "A", "10.20.0.3", "instance"),
        (f"web.{zone}", "A", "10.20.0.2", "group"),
        (f"web.{zone}", "A", "10.20.0.3", "group"),
        (f"mx1.{zone}", "A", "10.20.0.4", "instance"),
        ("example.org", "MX", f"10 mx1.{zone}", "mail"),
        (f"www.{zone}", "CNAME", "web", "manual"),
    }


def test_each_host_is_told_every_guest_and_the_whole_zone(svc: Services) -> None:
    net = make_network(svc, mode="isolated")
    a = make_instance(svc, "a", [NicRequest("lan")], host="one")
    make_instance(svc, "b", [NicRequest("lan")], host="two")
    with svc.db.read() as s:
        state = host_state(s, "h-1", svc.settings, provides=None)
        mac = s.query(Port).filter(Port.instance_id == a.id).one().mac
    (spec,) = state.networks
    assert (spec.network, spec.address, spec.mode, spec.domain) == (
        net.id,
        "10.20.0.1",
        "isolated",
        "lan.lamina.internal",
    )
    # Every host of the network can answer every guest's DHCP (one that moved there too).
    assert [(h.hostname, h.ip, h.primary) for h in spec.hosts] == [
        ("a", "10.20.0.2", True),
        ("b", "10.20.0.3", True),
    ]
    assert spec.hosts[0].mac == mac
    assert {r.name for r in spec.records} == {"a.lan.lamina.internal", "b.lan.lamina.internal"}
    # Both hosts are on 127.0.0.1 here: no tunnel can join them.
    assert (spec.vni, spec.local, spec.peers, spec.mtu) == (net.vni, None, [], 1450)
    assert spec.config_service_url == svc.settings.manager.url
    ipaddress.ip_network(spec.cidr)


def test_syncs_are_queued_once_per_host(svc: Services) -> None:
    with svc.db.write() as s:
        first = queue_sync(s, svc.jobs, ["h-1", "h-2", "h-1"])
        again = queue_sync(s, svc.jobs, ["h-1"])
        assert [j.target_id for j in first] == ["h-1", "h-2"] and again == []
        assert s.query(Job).filter(Job.kind == "network.sync").count() == 2
