"""What the agent writes for a network: dnsmasq's files and the nftables ruleset, by
equality; and the values it refuses to write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lamina.agent.dnsmasq import (
    RunAs,
    check_spec,
    dnsmasq_argv,
    readable_by,
    render,
    render_dhcp_hosts,
    render_hosts,
)
from lamina.agent.firewall import (
    FirewallNetwork,
    ip_forward_argv,
    nft_argv,
    render_removal,
    render_ruleset,
)
from lamina.errors import InvalidRequest
from lamina.wire.protocol import DhcpHost, DnsRecord, NetworkSpec

FOLDER = Path("/var/lib/lamina/agent/networks/net-0123456789abcdef")
NOBODY = RunAs("nobody", "nogroup")

SPEC = NetworkSpec(
    network="net-0123456789abcdef",
    name="shop",
    cidr="10.77.0.0/24",
    address="10.77.0.1",
    mode="nat",
    domain="shop.lamina.internal",
    hosts=[
        DhcpHost(mac="52:54:00:00:00:01", ip="10.77.0.5", hostname="web"),
        DhcpHost(mac="52:54:00:00:00:02", ip="10.77.0.6", hostname="db", primary=False),
    ],
    records=[
        DnsRecord(name="web.shop.lamina.internal", type="A", value="10.77.0.5"),
        DnsRecord(name="web.shop.lamina.internal", type="AAAA", value="fd00::5"),
        DnsRecord(name="www.shop.lamina.internal", type="A", value="10.77.0.5"),
        DnsRecord(name="www.shop.lamina.internal", type="A", value="10.77.1.9"),
        DnsRecord(name="shop.lamina.internal", type="MX", value="10 web.shop.lamina.internal"),
        DnsRecord(name="cdn.shop.lamina.internal", type="CNAME", value="web.shop.lamina.internal"),
        DnsRecord(name="shop.lamina.internal", type="TXT", value='v=spf1 "a", -all \\ #'),
        DnsRecord(
            name="_http._tcp.shop.lamina.internal",
            type="SRV",
            value="1 5 80 web.shop.lamina.internal",
        ),
    ],
)

COMMON = """\
# network shop (net-0123456789abcdef), written by the Lamina agent
bind-interfaces
interface=lmb0123456789ab
except-interface=lo
no-hosts
domain-needed
bogus-priv
user=nobody
group=nogroup
pid-file={f}/dnsmasq.pid
log-facility={f}/dnsmasq.log
dhcp-range=10.77.0.0,static,255.255.255.0,1h
dhcp-ignore=tag:!known
dhcp-authoritative
dhcp-ignore-names
dhcp-leasefile={f}/leases
dhcp-hostsfile={f}/dhcp-hosts
dhcp-mac=set:secondary,52:54:00:00:00:02
dhcp-option=option:router,10.77.0.1
dhcp-option=tag:secondary,option:router
dhcp-option=option:dns-server,10.77.0.1
dhcp-option=tag:secondary,option:dns-server
dhcp-option=tag:!secondary,option:domain-name,shop.lamina.internal
dhcp-option=tag:!secondary,option:domain-search,shop.lamina.internal
local=/shop.lamina.internal/
addn-hosts={f}/hosts
host-record=lamina.local,10.77.0.1
auth-zone=shop.lamina.internal
auth-ttl=60
""".replace("{f}", str(FOLDER))

RECORDS = """\
mx-host=shop.lamina.internal,web.shop.lamina.internal,10
cname=cdn.shop.lamina.internal,web.shop.lamina.internal
txt-record=shop.lamina.internal,"v=spf1 \\"a\\", -all \\\\ #"
srv-host=_http._tcp.shop.lamina.internal,web.shop.lamina.internal,80,1,5
"""


def test_conf_in_a_namespace_without_upstream_is_authoritative() -> None:
    files = render(SPEC, FOLDER, NOBODY, "lamina")
    expected = (
        COMMON
        + "auth-zone=lamina.local\n"
        + "auth-server=lamina.local,lmb0123456789ab\n"
        + "no-resolv\n"
        + RECORDS
    )
    assert files.conf == expected
    # A record outside the zone (a mail appliance's domain): its name is Lamina's too.
    mail = DnsRecord(name="example.org", type="MX", value="10 web.shop.lamina.internal")
    spec = SPEC.model_copy(update={"records": [*SPEC.records, mail]})
    conf = render(spec, FOLDER, NOBODY, "lamina").conf
    assert "auth-zone=lamina.local\nauth-zone=example.org\nauth-server=" in conf
    assert "mx-host=example.org,web.shop.lamina.internal,10\n" in conf


def test_conf_with_upstream_servers_forwards() -> None:
    spec = SPEC.model_copy(update={"upstream_dns": ["192.0.2.53", "2001:db8::53"]})
    expected = (
        COMMON
        + "auth-server=lamina.local\n"
        + "no-resolv\n"
        + "server=192.0.2.53\n"
        + "server=2001:db8::53\n"
        + RECORDS
    )
    assert render(spec, FOLDER, NOBODY, "lamina").conf == expected
    # On the host's own network without upstream_dns: the host's resolv.conf.
    assert render(SPEC, FOLDER, NOBODY, "").conf == COMMON + "auth-server=lamina.local\n" + RECORDS


def test_isolated_network_gives_no_route() -> None:
    spec = SPEC.model_copy(update={"mode": "isolated", "records": []})
    conf = render(spec, FOLDER, RunAs("root", "root"), "ns").conf.splitlines()
    routers = [line for line in conf if "router" in line]
    assert routers == ["dhcp-option=tag:secondary,option:router", "dhcp-option=option:router"]
    assert "user=root" in conf and "group=root" in conf


def test_hosts_files() -> None:
    assert render_dhcp_hosts(SPEC) == ("52:54:00:00:00:01,10.77.0.5\n52:54:00:00:00:02,10.77.0.6\n")
    assert render_hosts(SPEC) == (
        "10.77.0.5 web.shop.lamina.internal\n"
        "fd00::5 web.shop.lamina.internal\n"
        "10.77.0.5 www.shop.lamina.internal\n"
        "10.77.1.9 www.shop.lamina.internal\n"
    )
    empty = SPEC.model_copy(update={"hosts": [], "records": []})
    assert render_dhcp_hosts(empty) == "" and render_hosts(empty) == ""


def test_long_txt_is_split_into_strings_of_255_bytes() -> None:
    spec = SPEC.model_copy(
        update={"records": [DnsRecord(name="t.shop.lamina.internal", type="TXT", value="x" * 600)]}
    )
    line = render(spec, FOLDER, NOBODY, "ns").conf.splitlines()[-1]
    assert (
        line
        == 'txt-record=t.shop.lamina.internal,"'
        + '","'.join(["x" * 255, "x" * 255, "x" * 90])
        + '"'
    )


def _record(type_: str, value: str, name: str = "r.shop.lamina.internal") -> NetworkSpec:
    return SPEC.model_copy(update={"records": [DnsRecord(name=name, type=type_, value=value)]})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    [
        _record("A", "10.77.0.300"),
        _record("A", "fd00::1"),
        _record("AAAA", "10.77.0.5"),
        _record("MX", "10"),
        _record("MX", "70000 web.shop.lamina.internal"),
        _record("MX", "10 web.shop.lamina.internal\naddn-hosts=/etc/shadow"),
        _record("CNAME", "web.shop.lamina.internal\ndhcp-script=/bin/sh"),
        _record("CNAME", "Web,evil"),
        _record("SRV", "1 5 web.shop.lamina.internal"),
        _record("TXT", "line\ndhcp-script=/tmp/x"),
        SPEC.model_copy(update={"cidr": "10.77.0.0/33"}),
        SPEC.model_copy(update={"cidr": "10.77.0.1/24"}),  # host bits set
        SPEC.model_copy(update={"address": "10.78.0.1"}),
        SPEC.model_copy(update={"address": "10.77.0.255"}),
        SPEC.model_copy(
            update={"hosts": [DhcpHost(mac="52:54:00:00:00:01", ip="10.9.0.5", hostname="a")]}
        ),
        SPEC.model_copy(update={"upstream_dns": ["8.8.8.8\nserver=1.1.1.1"]}),
    ],
)
def test_values_that_cannot_be_written_are_refused(spec: NetworkSpec) -> None:
    with pytest.raises(InvalidRequest):
        check_spec(spec)


def test_dnsmasq_command() -> None:
    conf = FOLDER / "dnsmasq.conf"
    assert dnsmasq_argv("lamina", conf) == [
        "ip", "netns", "exec", "lamina", "dnsmasq", f"--conf-file={conf}",
    ]  # fmt: skip
    assert dnsmasq_argv("", conf) == ["dnsmasq", f"--conf-file={conf}"]


def test_readable_by(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    for path in (tmp_path, tmp_path / "a", folder):
        path.chmod(0o755)
    others = (os.getuid() + 12345, os.getgid() + 12345)
    parents_ok = all(p.stat().st_mode & 0o001 for p in tmp_path.parents)
    assert readable_by(folder, *others) is parents_ok
    (tmp_path / "a").chmod(0o750)
    assert readable_by(folder, *others) is False
    assert readable_by(folder, os.getuid(), os.getgid()) is True


# -- nftables ----------------------------------------------------------------------------

NAT = FirewallNetwork("lmbaaaaaaaaaaaa", "10.77.0.0/24", "10.77.0.1", "nat")
ISOLATED = FirewallNetwork("lmbbbbbbbbbbbbb", "10.78.0.0/24", "10.78.0.1", "isolated")


def test_ruleset() -> None:
    assert (
        render_ruleset([NAT, ISOLATED])
        == """\
add table inet lamina
delete table inet lamina
table inet lamina {
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "lmbaaaaaaaaaaaa" oifname "lmbaaaaaaaaaaaa" accept
		iifname "lmbbbbbbbbbbbbb" oifname "lmbbbbbbbbbbbbb" accept
		iifname "lmb*" oifname "lmb*" drop
		oifname "lmbaaaaaaaaaaaa" ct state established,related accept
		iifname "lmbaaaaaaaaaaaa" accept
		iifname "lmb*" drop
		oifname "lmb*" drop
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname != "lmb*" accept
		ct state established,related accept
		iifname "lmb*" udp dport 67 accept
		iifname "lmbaaaaaaaaaaaa" ip daddr 10.77.0.1 udp dport 53 accept
		iifname "lmbaaaaaaaaaaaa" ip daddr 10.77.0.1 tcp dport { 53, 80 } accept
		iifname "lmbaaaaaaaaaaaa" ip daddr 10.77.0.1 icmp type echo-request accept
		iifname "lmbbbbbbbbbbbbb" ip daddr 10.78.0.1 udp dport 53 accept
		iifname "lmbbbbbbbbbbbbb" ip daddr 10.78.0.1 tcp dport { 53, 80 } accept
		iifname "lmbbbbbbbbbbbbb" ip daddr 10.78.0.1 icmp type echo-request accept
		drop
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.77.0.0/24 oifname != "lmb*" masquerade
	}
}
"""
    )


def test_ruleset_of_isolated_networks_only_forwards_nothing() -> None:
    ruleset = render_ruleset([ISOLATED])
    assert "masquerade" not in ruleset
    assert 'iifname "lmbbbbbbbbbbbbb" accept' not in ruleset
    assert '\t\tiifname "lmb*" drop\n\t\toifname "lmb*" drop\n' in ruleset


def test_removal_and_commands() -> None:
    assert render_removal() == "add table inet lamina\ndelete table inet lamina\n"
    assert nft_argv("ns") == ["ip", "netns", "exec", "ns", "nft", "-f", "-"]
    assert nft_argv("") == ["nft", "-f", "-"]
    assert ip_forward_argv("ns") == [
        "ip", "netns", "exec", "ns", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
    ]  # fmt: skip
