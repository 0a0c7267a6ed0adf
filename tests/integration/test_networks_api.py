"""Networks through the CLI, a real manager and a real agent whose bridges and dnsmasq live in
a network namespace the test makes: addresses allocated and refused, the zone answered by
dnsmasq (queried with dig inside the namespace), records added and removed, a network in use
kept, and everything withdrawn when the instances and the network go. The guests are
libvirt's test driver here (no QEMU): tests/integration/test_network_guests.py boots real
ones."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from clouds import add_host
from harness import Cloud, wait_until
from namespaces import in_ns

pytestmark = pytest.mark.integration
ZONE = "lan.lamina.internal"


def dig(netns: str, server: str, name: str, rtype: str = "A") -> list[str]:
    out = in_ns(netns, "dig", "+short", "+time=2", "+tries=2", f"@{server}", name, rtype)
    return sorted(out.split("\n")[:-1])


def json_cli(cloud: Cloud, *args: str) -> dict[str, object] | list[dict[str, object]]:
    return json.loads(cloud.cli("--json", *args).stdout)  # type: ignore[no-any-return]


def test_networks_dns_and_records_through_a_real_agent(
    make_cloud: Callable[..., Cloud], netns: str, tmp_path: Path
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not a kernel" * 100)
    cloud = make_cloud()
    cloud.start_manager()
    add_host(cloud, "h1", LAMINA_AGENT__NETWORK_NAMESPACE=netns)

    cloud.cli("network", "create", "lan", "--cidr", "10.88.0.0/24")
    cloud.cli("network", "create", "back", "--cidr", "10.89.0.0/24", "--isolated")
    # Bad input, refused clearly (exit 2 for a bad request, 1 for a conflict).
    overlap = cloud.cli("network", "create", "other", "--cidr", "10.88.0.0/16", check=False)
    assert overlap.returncode == 1 and "overlaps 10.88.0.0/24" in overlap.stderr
    bad = cloud.cli("network", "create", "other", "--cidr", "10.90.0.7/24", check=False)
    assert bad.returncode == 2 and "host bits set" in bad.stderr
    taken = cloud.cli("network", "create", "lan", "--cidr", "10.91.0.0/24", check=False)
    assert taken.returncode == 1 and "already exists" in taken.stderr

    def create(name: str, *options: str, check: bool = True) -> object:
        return cloud.cli(
            "instance", "create", name, "--kernel", str(kernel), "--memory", "64", *options,
            check=check,
        )  # fmt: skip

    create("a", "--network", "lan", "--network", "back")
    create("b", "--network", "lan", "--ip", "10.88.0.50", "--group", "web")
    create("c", "--network", "lan", "--group", "web")
    dup = create("d", "--network", "lan", "--ip", "10.88.0.50", check=False)
    assert dup.returncode == 1 and "10.88.0.50 is taken" in dup.stderr  # type: ignore[attr-defined]
    outside = create("d", "--network", "lan", "--ip", "10.99.0.5", check=False)
    assert outside.returncode == 2 and "outside" in outside.stderr  # type: ignore[attr-defined]
    gateway = create("d", "--network", "lan", "--ip", "10.88.0.1", check=False)
    assert gateway.returncode == 1 and "gateway" in gateway.stderr  # type: ignore[attr-defined]

    shown = json_cli(cloud, "instance", "show", "a")
    assert isinstance(shown, dict)
    assert [(n["network"], n["ip"], n["fqdn"]) for n in shown["networks"]] == [  # type: ignore[index, union-attr]
        ("lan", "10.88.0.2", f"a.{ZONE}"),
        ("back", "10.89.0.2", "a.back.lamina.internal"),
    ]

    # The host's side: a bridge per network with the gateway on it, dnsmasq answering.
    addresses = in_ns(netns, "ip", "-o", "-4", "addr", "show")
    assert re.search(r"lmb\w+\s+inet 10\.88\.0\.1/24", addresses), addresses
    assert re.search(r"lmb\w+\s+inet 10\.89\.0\.1/24", addresses), addresses
    wait_until(lambda: dig(netns, "10.88.0.1", f"a.{ZONE}") == ["10.88.0.2"], 30, "a's name")
    assert dig(netns, "10.88.0.1", f"b.{ZONE}") == ["10.88.0.50"]
    assert dig(netns, "10.88.0.1", f"web.{ZONE}") == ["10.88.0.3", "10.88.0.50"]  # round robin
    assert dig(netns, "10.88.0.1", "lamina.local") == ["10.88.0.1"]
    assert dig(netns, "10.89.0.1", "a.back.lamina.internal") == ["10.89.0.2"]
    nx = in_ns(netns, "dig", "+time=2", "@10.88.0.1", f"nobody.{ZONE}")
    assert "status: NXDOMAIN" in nx

    # Records by hand: in the zone once the command returns, gone once deleted.
    cloud.cli("dns", "record", "add", "www", "CNAME", f"b.{ZONE}", "--network", "lan")
    cloud.cli("dns", "record", "add", "@", "MX", "10", f"b.{ZONE}", "--network", "lan")
    cloud.cli("dns", "record", "add", "@", "TXT", "v=spf1 mx -all", "--network", "lan")
    cloud.cli("dns", "record", "add", "_http._tcp", "SRV", "0", "5", "80", f"b.{ZONE}",
              "--network", "lan")  # fmt: skip
    assert f"b.{ZONE}." in dig(netns, "10.88.0.1", f"www.{ZONE}", "CNAME")
    assert dig(netns, "10.88.0.1", ZONE, "MX") == [f"10 b.{ZONE}."]
    assert dig(netns, "10.88.0.1", ZONE, "TXT") == ['"v=spf1 mx -all"']
    assert dig(netns, "10.88.0.1", f"_http._tcp.{ZONE}", "SRV") == [f"0 5 80 b.{ZONE}."]
    listed = json_cli(cloud, "dns", "record", "list", "--network", "lan")
    assert isinstance(listed, list)
    sources = {(r["name"], r["type"], r["source"]) for r in listed}
    assert (f"web.{ZONE}", "A", "group") in sources and (
        f"www.{ZONE}",
        "CNAME",
        "manual",
    ) in sources
    mx = next(r for r in listed if r["type"] == "MX")
    cloud.cli("dns", "record", "delete", str(mx["id"]), "--network", "lan")
    assert dig(netns, "10.88.0.1", ZONE, "MX") == []
    bad_record = cloud.cli("dns", "record", "add", "x", "A", "10.0.0.500", "--network", "lan",
                           check=False)  # fmt: skip
    assert bad_record.returncode == 2 and "not an address" in bad_record.stderr
    clash = cloud.cli("dns", "record", "add", "www", "A", "10.88.0.9", "--network", "lan",
                      check=False)  # fmt: skip
    assert clash.returncode == 1 and "CNAME" in clash.stderr

    # A network in use stays; once its instances are gone it can go, and leaves nothing.
    busy = cloud.cli("network", "delete", "lan", check=False)
    assert busy.returncode == 1 and "in use by instance(s) a, b, c" in busy.stderr
    for name in ("a", "b", "c"):
        cloud.cli("instance", "delete", name, "--yes")
    # The host's last instances on the networks are gone, and so are the networks from it.
    withdrawn = lambda: "10.88.0.1" not in in_ns(netns, "ip", "-o", "-4", "addr")  # noqa: E731
    wait_until(withdrawn, 30, "lan withdrawn from the host")
    cloud.cli("network", "delete", "lan")
    cloud.cli("network", "delete", "back")
    assert json_cli(cloud, "network", "list") == []
    wait_until(lambda: "lmb" not in in_ns(netns, "ip", "-o", "link"), 30, "bridges gone")
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    assert pids.stdout.split() == [], "a dnsmasq (or anything) still runs in the namespace"
