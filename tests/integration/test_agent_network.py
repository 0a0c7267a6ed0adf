"""The agent's networks for real, inside network namespaces the tests make.

An agent (in-process, over mutual TLS; a real ``lamina agent`` process for the restart)
with ``network_namespace`` set converges a state with a nat and an isolated network: real
bridges, dnsmasq answering DNS (dig) and DHCP (busybox udhcpc in a client namespace whose
veth is a port of the bridge), nftables isolating the networks, the configuration-service
relay in front of a stand-in manager on 127.0.0.1, and port forwards from 127.0.0.1 to a
server inside a client namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_server import serve_agent
from clouds import add_host
from harness import ROOT, Cloud, wait_until
from namespaces import Namespaces, in_ns, sh

from lamina.agent.dnsmasq import find_dnsmasqs
from lamina.agent.networks import NetworkConfig
from lamina.agent.server import Agent
from lamina.errors import Conflict, InvalidRequest, LaminaError
from lamina.identity.ca import CertificateAuthority
from lamina.wire.client import AgentClient
from lamina.wire.pool import AgentPool
from lamina.wire.protocol import (
    DhcpHost,
    DnsRecord,
    GuestDefinition,
    GuestNic,
    NetworkInfo,
    NetworkSpec,
    NetworkState,
    PortForward,
    bridge_name,
    tap_name,
)

pytestmark = pytest.mark.integration

NAT_ID = "net-a1a1a1a1a1a1a1a1"
ISO_ID = "net-b2b2b2b2b2b2b2b2"
WEB_MAC = "52:54:00:00:0a:05"
DB_MAC = "52:54:00:00:0a:06"
NEW_MAC = "52:54:00:00:0a:07"
B1_MAC = "52:54:00:00:0b:05"


def nat_network(**changes: Any) -> NetworkSpec:
    zone = "shop.lamina.internal"
    spec = NetworkSpec(
        network=NAT_ID,
        name="shop",
        cidr="10.77.0.0/24",
        address="10.77.0.1",
        mode="nat",
        domain=zone,
        hosts=[
            DhcpHost(mac=WEB_MAC, ip="10.77.0.5", hostname="web"),
            DhcpHost(mac=DB_MAC, ip="10.77.0.6", hostname="db", primary=False),
        ],
        records=[
            DnsRecord(name=f"web.{zone}", type="A", value="10.77.0.5"),
            DnsRecord(name=f"web.{zone}", type="AAAA", value="fd00::5"),
            DnsRecord(name=f"db.{zone}", type="A", value="10.77.0.6"),
            DnsRecord(name=f"www.{zone}", type="A", value="10.77.0.5"),
            DnsRecord(name=f"www.{zone}", type="A", value="10.77.0.6"),
            DnsRecord(name=zone, type="MX", value=f"10 web.{zone}"),
            DnsRecord(name=f"cdn.{zone}", type="CNAME", value=f"web.{zone}"),
            DnsRecord(name=zone, type="TXT", value='v=spf1 "a", -all # not a comment'),
            DnsRecord(name=f"_http._tcp.{zone}", type="SRV", value=f"1 5 80 web.{zone}"),
        ],
    )
    return spec.model_copy(update=changes)


def isolated_network(**changes: Any) -> NetworkSpec:
    spec = NetworkSpec(
        network=ISO_ID,
        name="vault",
        cidr="10.78.0.0/24",
        address="10.78.0.1",
        mode="isolated",
        domain="vault.lamina.internal",
        hosts=[DhcpHost(mac=B1_MAC, ip="10.78.0.5", hostname="b1")],
        records=[DnsRecord(name="b1.vault.lamina.internal", type="A", value="10.78.0.5")],
    )
    return spec.model_copy(update=changes)


@dataclass
class Host:
    agent: Agent
    client: AgentClient
    namespace: str
    root: Path


@pytest.fixture
def host(open_dir: Path, namespaces: Namespaces) -> Iterator[Host]:
    """An in-process agent whose networks live in namespace ``lamina-t<random>`` (the agent
    creates it). At the end its networks are removed: no dnsmasq may outlive the test."""
    namespace = namespaces.name()
    with serve_agent(open_dir, network=NetworkConfig(namespace=namespace)) as served:
        pool = AgentPool(served.ca.client_files())
        client = pool.for_address(served.address)
        try:
            yield Host(served.agent, client, namespace, open_dir / "agent")
        finally:
            client.network_state(NetworkState())
            pool.close()
    assert find_dnsmasqs(open_dir) == {}


def dig(namespace: str, server: str, name: str, kind: str = "A") -> tuple[set[str], str, str]:
    """(answers, status, flags) of a query, without recursion."""
    out = in_ns(namespace, "dig", "+norec", "+time=2", "+tries=2", f"@{server}", name, kind)
    status = out.split("status: ", 1)[1].split(",", 1)[0]
    flags = out.split("flags: ", 1)[1].split(";", 1)[0]
    answers = set()
    section = False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
        elif section and not line.strip():
            section = False
        elif section:
            answers.add(line.split(None, 4)[4])
    return answers, status, flags


def dhcp(namespace: str, folder: Path, timeout_tries: int = 3) -> dict[str, str] | None:
    """Ask for a lease with busybox udhcpc on ``eth0``; the lease's options, None if none."""
    script = folder / "udhcpc.sh"
    if not script.exists():
        script.write_text('#!/bin/sh\nenv > "$LEASES/$1"\n')
        script.chmod(0o755)
    bound = folder / "bound"
    bound.unlink(missing_ok=True)
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f",
         "-t", str(timeout_tries), "-T", "1", "-s", str(script)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "LEASES": str(folder)},
    )  # fmt: skip
    if result.returncode != 0:
        return None
    lines = bound.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def ping(namespace: str, address: str) -> bool:
    return (
        sh("ip", "netns", "exec", namespace, "busybox", "ping", "-c", "1", "-W", "1", address,
           check=False).returncode == 0
    )  # fmt: skip


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie nobody reaps counts: it has no cmdline)."""
    try:
        return not Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return True


def info(host: Host, network: str) -> NetworkInfo:
    return next(i for i in host.client.networks() if i.network == network)


# -- bridges, DNS, DHCP -------------------------------------------------------------------


def test_two_networks_dns_and_dhcp(host: Host, namespaces: Namespaces, tmp_path: Path) -> None:
    ns = host.namespace
    infos = host.client.network_state(NetworkState(networks=[nat_network(), isolated_network()]))
    assert [(i.network, i.bridge, i.namespace, i.address) for i in infos] == [
        (NAT_ID, "lmba1a1a1a1a1a1", ns, "10.77.0.1"),
        (ISO_ID, "lmbb2b2b2b2b2b2", ns, "10.78.0.1"),
    ]
    assert all(i.dnsmasq_pid for i in infos) and all(i.relay is None for i in infos)
    links = {link["ifname"]: link for link in json.loads(sh("ip", "-n", ns, "-j", "addr").stdout)}
    for network in infos:
        addresses = [
            a["local"] for a in links[network.bridge]["addr_info"] if a["family"] == "inet"
        ]
        assert addresses == [network.address]
        # dnsmasq runs as nobody, inside the namespace.
        status = Path(f"/proc/{network.dnsmasq_pid}/status").read_text()
        assert "\nUid:\t65534\t" in status
        inode = os.stat(f"/proc/{network.dnsmasq_pid}/ns/net").st_ino
        assert inode == os.stat(f"/run/netns/{ns}").st_ino
    assert "table inet lamina" in in_ns(ns, "nft", "list", "ruleset")
    # The same state again changes nothing.
    assert (
        host.client.network_state(NetworkState(networks=[nat_network(), isolated_network()]))
        == infos
    )

    # DNS, from a client on the nat network.
    bridge = bridge_name(NAT_ID)
    asker = namespaces.client("ask", ns, bridge, "52:54:00:00:0a:63", "10.77.0.99/24")
    zone = "shop.lamina.internal"
    assert dig(asker, "10.77.0.1", f"web.{zone}") == ({"10.77.0.5"}, "NOERROR", "qr aa")
    assert dig(asker, "10.77.0.1", f"web.{zone}", "AAAA")[0] == {"fd00::5"}
    assert dig(asker, "10.77.0.1", f"www.{zone}")[0] == {"10.77.0.5", "10.77.0.6"}
    assert dig(asker, "10.77.0.1", zone, "MX") == ({f"10 web.{zone}."}, "NOERROR", "qr aa")
    assert dig(asker, "10.77.0.1", f"cdn.{zone}", "CNAME")[0] == {f"web.{zone}."}
    assert dig(asker, "10.77.0.1", f"cdn.{zone}")[0] == {f"web.{zone}.", "10.77.0.5"}
    assert dig(asker, "10.77.0.1", zone, "TXT")[0] == {'"v=spf1 \\"a\\", -all # not a comment"'}
    assert dig(asker, "10.77.0.1", f"_http._tcp.{zone}", "SRV")[0] == {f"1 5 80 web.{zone}."}
    assert dig(asker, "10.77.0.1", "lamina.local") == ({"10.77.0.1"}, "NOERROR", "qr aa")
    answers, status, flags = dig(asker, "10.77.0.1", f"nothing.{zone}")
    assert (answers, status, flags) == (set(), "NXDOMAIN", "qr aa")
    # Nowhere to forward to inside the namespace: other names are refused at once.
    assert dig(asker, "10.77.0.1", "example.org")[1] == "REFUSED"
    # The isolated network's dnsmasq answers its own zone, on its own bridge only.
    assert dig(ns, "10.78.0.1", "b1.vault.lamina.internal")[0] == {"10.78.0.5"}

    # DHCP: a listed MAC gets its address, the router and DNS server of a primary NIC.
    web = namespaces.client("web", ns, bridge, WEB_MAC)
    lease = dhcp(web, tmp_path)
    assert lease is not None
    assert (lease["ip"], lease["router"], lease["dns"]) == ("10.77.0.5", "10.77.0.1", "10.77.0.1")
    assert "hostname" not in lease  # the guest's name comes from its config disk
    assert lease["domain"] == zone and lease["subnet"] == "255.255.255.0"
    # A secondary NIC gets an address only: no route, no DNS server, no domain.
    db = namespaces.client("db", ns, bridge, DB_MAC)
    lease = dhcp(db, tmp_path)
    assert lease is not None and lease["ip"] == "10.77.0.6"
    assert not {"router", "dns", "domain"} & set(lease)
    # An unknown MAC gets nothing.
    stranger = namespaces.client("new", ns, bridge, NEW_MAC)
    assert dhcp(stranger, tmp_path, timeout_tries=2) is None

    # A new guest: the hosts files change and dnsmasq re-reads them (SIGHUP, same pid;
    # with a secondary NIC holding a lease, which a tag in the hosts file would crash).
    pid = infos[0].dnsmasq_pid
    hosts = [*nat_network().hosts, DhcpHost(mac=NEW_MAC, ip="10.77.0.7", hostname="new")]
    records = [*nat_network().records, DnsRecord(name=f"new.{zone}", type="A", value="10.77.0.7")]
    host.client.network_state(
        NetworkState(networks=[nat_network(hosts=hosts, records=records), isolated_network()])
    )
    assert info(host, NAT_ID).dnsmasq_pid == pid
    lease = dhcp(stranger, tmp_path)
    assert lease is not None and lease["ip"] == "10.77.0.7"
    assert dig(asker, "10.77.0.1", f"new.{zone}")[0] == {"10.77.0.7"}

    # Another record kind changes the configuration: a restart, with the leases kept.
    records.append(DnsRecord(name=f"mail.{zone}", type="MX", value=f"20 new.{zone}"))
    host.client.network_state(
        NetworkState(networks=[nat_network(hosts=hosts, records=records), isolated_network()])
    )
    restarted = info(host, NAT_ID).dnsmasq_pid
    assert restarted is not None and restarted != pid
    assert dig(asker, "10.77.0.1", f"mail.{zone}", "MX")[0] == {f"20 new.{zone}."}
    leases = (host.root / "networks" / NAT_ID / "leases").read_text()
    assert WEB_MAC in leases and NEW_MAC in leases

    # Removing a network leaves neither its dnsmasq, nor its bridge, nor its rules.
    host.client.network_state(NetworkState(networks=[isolated_network()]))
    assert [i.network for i in host.client.networks()] == [ISO_ID]
    assert gone(restarted)
    assert bridge not in sh("ip", "-n", ns, "link", "show").stdout
    assert bridge not in in_ns(ns, "nft", "list", "ruleset")
    assert not (host.root / "networks" / NAT_ID).exists()
    host.client.network_state(NetworkState())
    assert "lamina" not in in_ns(ns, "nft", "list", "ruleset")
    assert "lmb" not in sh("ip", "-n", ns, "link", "show").stdout


def test_a_bad_state_changes_nothing_and_a_failed_network_is_named(
    host: Host, namespaces: Namespaces, tmp_path: Path
) -> None:
    host.client.network_state(NetworkState(networks=[isolated_network()]))
    bad = nat_network(records=[DnsRecord(name="x.shop.lamina.internal", type="MX", value="x")])
    with pytest.raises(InvalidRequest, match="MX"):
        host.client.network_state(NetworkState(networks=[bad]))
    assert [i.network for i in host.client.networks()] == [ISO_ID]
    # A VLAN network on an uplink that is not there fails; the other network comes up.
    other = namespaces.name("two")  # an agent owns every Lamina bridge of its namespace
    agent = Agent(
        tmp_path / "agent2", host.agent.hypervisor,
        network=NetworkConfig(namespace=other, uplink="up9"),
    )  # fmt: skip
    vlan = nat_network(vlan=42)
    with pytest.raises(LaminaError, match=f"{NAT_ID} \\(shop\\): the uplink up9 does not exist"):
        agent.network.apply(NetworkState(networks=[vlan, isolated_network()]))
    assert {i.network: i.dnsmasq_pid is not None for i in agent.network.list()} == {
        NAT_ID: False,  # its bridge is up, its dnsmasq never started
        ISO_ID: True,
    }
    agent.network.apply(NetworkState())
    agent.close()
    assert find_dnsmasqs(tmp_path) == {}


# -- isolation and NAT ----------------------------------------------------------------------


def test_networks_are_isolated_and_nat_masquerades(host: Host, namespaces: Namespaces) -> None:
    ns = host.namespace
    state = NetworkState(networks=[nat_network(), isolated_network()])
    host.client.network_state(state)
    nat, iso = bridge_name(NAT_ID), bridge_name(ISO_ID)
    a1 = namespaces.client("a1", ns, nat, WEB_MAC, "10.77.0.5/24", "10.77.0.1")
    a2 = namespaces.client("a2", ns, nat, DB_MAC, "10.77.0.6/24", "10.77.0.1")
    # b1 gets a route too, so that only the firewall stands between a1 and b1.
    b1 = namespaces.client("b1", ns, iso, B1_MAC, "10.78.0.5/24", "10.78.0.1")
    # Outside: a host behind a non-Lamina interface of the agent's namespace, with no route
    # back to the guests' networks (only masquerading lets it answer).
    outside = namespaces.make("out")
    end = namespaces.veth(outside, ns)
    sh("ip", "-n", ns, "addr", "add", "198.51.100.1/24", "dev", end)
    sh("ip", "-n", ns, "link", "set", end, "up")
    sh("ip", "-n", outside, "addr", "add", "198.51.100.2/24", "dev", "eth0")
    sh("ip", "-n", outside, "link", "set", "eth0", "up")

    assert ping(a1, "10.77.0.6") and ping(a2, "10.77.0.5")  # one network: bridged
    assert ping(a1, "10.77.0.1")  # its own service address
    assert not ping(a1, "10.78.0.5")  # another network's guest
    assert not ping(a1, "10.78.0.1")  # another network's service address
    assert not ping(b1, "10.77.0.5")
    assert ping(a1, "198.51.100.2")  # nat: out, masqueraded, and the answer back
    assert not ping(b1, "198.51.100.2")  # isolated: never forwarded
    # Even with a route to the guests, nobody outside opens a connection to them.
    sh("ip", "-n", outside, "route", "add", "10.77.0.0/16", "via", "198.51.100.1")
    assert not ping(outside, "10.77.0.5") and not ping(outside, "10.78.0.5")

    # The firewall is what keeps them apart: without the table a1 reaches b1 ...
    in_ns(ns, "nft", "delete", "table", "inet", "lamina")
    assert ping(a1, "10.78.0.5")
    # ... and pushing the state again puts it back.
    host.client.network_state(state)
    assert not ping(a1, "10.78.0.5")


# -- the configuration-service relay and port forwards ------------------------------------


@pytest.fixture
def manager() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for the manager on 127.0.0.1 (the relay's upstream): it records requests
    and answers JSON."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            seen.append({"method": self.command, "path": self.path, "body": body,
                         "headers": {k.lower(): v for k, v in self.headers.items()}})  # fmt: skip
            answer = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_PUT = do_POST = _any  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


FETCH = """
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode() or None,
                                 headers={"Authorization": "Bearer t0k",
                                          "X-Lamina-Guest-Address": "10.77.0.200"})
try:
    with urllib.request.urlopen(request, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def fetch(namespace: str, url: str, body: str = "") -> tuple[int, str]:
    out = in_ns(namespace, "python3", "-c", FETCH, url, body).strip()
    status, _, text = out.partition(" ")
    return int(status), text


def test_relay_and_port_forwards(
    host: Host, namespaces: Namespaces, manager: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, seen = manager
    ns = host.namespace
    nat = nat_network(config_service_url=url)
    infos = host.client.network_state(NetworkState(networks=[nat, isolated_network()]))
    assert infos[0].relay == "10.77.0.1:80" and infos[1].relay is None
    web = namespaces.client("web", ns, bridge_name(NAT_ID), WEB_MAC, "10.77.0.5/24", "10.77.0.1")

    status, text = fetch(web, "http://10.77.0.1/guest/v1/instances/i-1?x=1")
    assert (status, json.loads(text)) == (200, {"path": "/guest/v1/instances/i-1?x=1"})
    headers = seen[-1]["headers"]
    assert headers["x-lamina-guest-address"] == "10.77.0.5"  # not what the guest claimed
    assert headers["x-lamina-network"] == NAT_ID
    assert headers["authorization"] == "Bearer t0k"
    assert fetch(web, "http://10.77.0.1/guest/RPC2", "<methodCall/>")[0] == 200
    assert seen[-1]["method"] == "POST" and seen[-1]["body"] == b"<methodCall/>"
    assert fetch(web, "http://10.77.0.1/other")[0] == 404
    # lamina.local is the relay, by the network's own DNS.
    assert dig(web, "10.77.0.1", "lamina.local")[0] == {"10.77.0.1"}

    # A port forward from the host's loopback to a server inside the guest's namespace.
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello from the guest\n")
    server = subprocess.Popen(
        ["ip", "netns", "exec", web, "python3", "-m", "http.server", "8080",
         "--bind", "10.77.0.5", "--directory", str(site)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: "10.77.0.5:8080" in in_ns(web, "ss", "-ltn"), 10, "the guest's server")
        spec = PortForward(network=NAT_ID, guest_ip="10.77.0.5", guest_port=8080)
        forward = host.client.forward_create("fwd-0000000a", spec)
        assert forward.bind == "127.0.0.1" and forward.host_port > 0
        got = httpx.get(f"http://127.0.0.1:{forward.host_port}/hello.txt", timeout=10)
        assert got.text == "hello from the guest\n"
        assert host.client.forward_create("fwd-0000000a", spec) == forward  # a no-op
        assert host.client.forwards() == [forward]
        taken = PortForward(
            network=NAT_ID, guest_ip="10.77.0.5", guest_port=8080, host_port=forward.host_port
        )
        with pytest.raises(Conflict, match=str(forward.host_port)):
            host.client.forward_create("fwd-0000000b", taken)
        with pytest.raises(InvalidRequest, match="not on this host"):
            host.client.forward_create(
                "fwd-0000000b", spec.model_copy(update={"network": "net-ffffffffffffffff"})
            )
        host.client.forward_delete("fwd-0000000a")
        host.client.forward_delete("fwd-0000000a")
        assert host.client.forwards() == []
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{forward.host_port}/hello.txt", timeout=5)
    finally:
        server.kill()
        server.wait(10)


# -- a real agent process, restarted ------------------------------------------------------


def test_a_restarted_agent_restores_dnsmasq_relay_and_forwards(
    make_cloud: Callable[..., Cloud],
    namespaces: Namespaces,
    manager: tuple[str, list[dict[str, Any]]],
    tmp_path: Path,
    open_dir: Path,
) -> None:
    url, seen = manager
    ns = namespaces.name()
    cloud = make_cloud()
    cloud.start_manager()
    data = open_dir / "agent-h1"
    env = {"LAMINA_AGENT__NETWORK_NAMESPACE": ns, "LAMINA_AGENT__DATA_DIR": str(data)}
    port = add_host(cloud, "h1", **env)
    pool = AgentPool(CertificateAuthority(cloud.root / "manager" / "ca").client_files())
    client = pool.for_address(f"127.0.0.1:{port}")
    try:
        state = NetworkState(networks=[nat_network(config_service_url=url), isolated_network()])
        before = client.network_state(state)
        web = namespaces.client("web", ns, bridge_name(NAT_ID), WEB_MAC, "10.77.0.5/24")
        server = subprocess.Popen(
            ["ip", "netns", "exec", web, "python3", "-m", "http.server", "8080",
             "--bind", "10.77.0.5", "--directory", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: "10.77.0.5:8080" in in_ns(web, "ss", "-ltn"), 10, "guest server")
        forward = client.forward_create(
            "fwd-0000000c", PortForward(network=NAT_ID, guest_ip="10.77.0.5", guest_port=8080)
        )
        assert httpx.get(f"http://127.0.0.1:{forward.host_port}/").status_code == 200

        agent = cloud.agents[-1]
        agent.kill(15)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{forward.host_port}/", timeout=5)
        assert [i.dnsmasq_pid for i in before] == [
            int((data / "networks" / n / "dnsmasq.pid").read_text()) for n in (NAT_ID, ISO_ID)
        ]  # dnsmasq outlives its agent
        cloud.start_agent("h1", None, port, **env)
        after = wait_until(lambda: client.networks(), 30, "the restarted agent")
        assert after == before  # same dnsmasq pids, the relay listening again
        assert fetch(web, "http://10.77.0.1/guest/v1/x")[0] == 200
        assert seen[-1]["headers"]["x-lamina-guest-address"] == "10.77.0.5"
        assert client.forwards() == [forward]
        assert httpx.get(f"http://127.0.0.1:{forward.host_port}/").status_code == 200
        server.kill()
        server.wait(10)
        client.forward_delete("fwd-0000000c")
        client.network_state(NetworkState())
        assert find_dnsmasqs(data) == {}
    finally:
        with contextlib.suppress(LaminaError):
            client.network_state(NetworkState())
        pool.close()
    assert find_dnsmasqs(open_dir) == {}


# -- a guest with a NIC ---------------------------------------------------------------------


def test_test_driver_guest_with_nics(host: Host) -> None:
    """libvirt's test driver makes no taps: defining and starting a guest with NICs works
    and plugging is a no-op. A NIC on a network the host lacks is refused."""
    host.client.network_state(NetworkState(networks=[nat_network()]))
    name = "lamina-nettest-testdriver"
    nics = [GuestNic(network=NAT_ID, mac=WEB_MAC)]
    try:
        host.client.define(name, GuestDefinition(vcpus=1, memory_mib=64, nics=nics))
        assert host.agent.nics(name) == nics
        assert host.client.act(name, "start").state == "running"
        with pytest.raises(InvalidRequest, match=ISO_ID):
            host.client.define(
                "lamina-nettest-other",
                GuestDefinition(
                    vcpus=1, memory_mib=64, nics=[GuestNic(network=ISO_ID, mac=DB_MAC)]
                ),
            )
        # Its network gone, it does not start (its tap would have nowhere to go).
        host.client.act(name, "destroy")
        host.client.network_state(NetworkState())
        with pytest.raises(InvalidRequest, match=NAT_ID):
            host.client.act(name, "start")
    finally:
        host.client.undefine(name)
        host.client.undefine("lamina-nettest-other")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-guest.sh"), str(out)], check=True)
    return out


def host_taps() -> list[str]:
    return [
        line.split(":")[1].strip().split("@")[0]
        for line in sh("ip", "-o", "link", "show").stdout.splitlines()
        if line.split(":")[1].strip().startswith("lmt")
    ]


def test_a_real_guest_nic_is_plugged_into_the_namespaces_bridge(
    open_dir: Path, namespaces: Namespaces, sample: Path
) -> None:
    """A QEMU guest (libvirt in the host's namespace, TCG) with a NIC on a network in the
    agent's namespace: it starts paused, its tap moves into the namespace's bridge, then it
    runs. No tap stays in the host's network, and undefining it leaves nothing."""
    namespace = namespaces.name()
    name = f"lamina-nettest-{uuid.uuid4().hex[:8]}"
    tap = tap_name(WEB_MAC)
    bridge = bridge_name(NAT_ID)
    with serve_agent(
        open_dir, uri="qemu:///system", network=NetworkConfig(namespace=namespace)
    ) as served:
        pool = AgentPool(served.ca.client_files())
        client = pool.for_address(served.address)
        try:
            client.network_state(NetworkState(networks=[nat_network()]))
            kernel = sample / "vmlinux" if (sample / "vmlinux").exists() else sample / "vmlinuz"
            spec = GuestDefinition(
                vcpus=1,
                memory_mib=128,
                kernel=client.cache_install(str(kernel)).sha256,
                initrd=client.cache_install(str(sample / "initrd.img")).sha256,
                cmdline="console=ttyS0",
                nics=[GuestNic(network=NAT_ID, mac=WEB_MAC)],
            )
            client.define(name, spec)
            assert client.act(name, "start").state == "running"
            ports = sh("ip", "-n", namespace, "-o", "link", "show", "master", bridge).stdout
            assert tap in ports and ",UP,LOWER_UP>" in ports.split(tap, 1)[1].splitlines()[0]
            assert tap not in host_taps()
            link = json.loads(sh("ip", "-n", namespace, "-j", "link", "show", tap).stdout)[0]
            assert link["address"] == "fe" + WEB_MAC[2:]  # the host's end of the guest's NIC
            wait_until(lambda: "lamina-sample: booted" in client.console(name).data, 60, "the boot")
            # A stop and a start plug it again (QEMU makes a new tap each boot).
            client.act(name, "destroy")
            assert tap not in sh("ip", "-n", namespace, "-o", "link", "show").stdout
            client.act(name, "start")
            assert tap in sh("ip", "-n", namespace, "-o", "link", "show", "master", bridge).stdout
        finally:
            client.undefine(name)
            client.network_state(NetworkState())
            pool.close()
    assert name not in sh("virsh", "-c", "qemu:///system", "list", "--all", "--name").stdout
    assert tap not in host_taps()
    assert tap not in sh("ip", "-n", namespace, "-o", "link", "show").stdout
