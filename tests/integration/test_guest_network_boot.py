"""The lamina-base substrate on a network (docs/networks.md, "The guest's side"), booted
under QEMU (TCG) directly, as test_layered_boot.py boots it, inside a network namespace each
test makes and removes: a bridge with the host's service address, a real dnsmasq answering
DHCP for the guest's MAC only and DNS for the zone and ``lamina.local``, a stand-in for the
configuration service on the bridge's port 80, and the guest's tap in the bridge. Checked from
the console: the DHCP line, netprobe's names, addresses and configuration-service answers,
mailserv taking a message from Python's smtplib, a page fetched from the guest; a guest
without a NIC still boots fast; a secondary NIC gets an address only; dnsserv answers dig on
its network address, to the clients allowed only.

No traffic leaves the namespace: it has no uplink and no route out; the addresses the guests
ping are the bridge's own."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import dig
from test_layered_boot import (
    Channel,
    Disk,
    Qmp,
    assert_ready,
    build,
    guest_lines,
    make_config,
    make_upper,
    power_off,
    start,
    stop,
    wait_line,
    wait_ready,
)

from lamina.channels.build import mksquashfs_argv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "dnsmasq", "ip", "nft")),
        reason="needs qemu-system-x86_64, dnsmasq, iproute2 and nftables",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

ZONE = "default.lamina.internal"
SERVICE_ADDRESS = "10.77.0.1"
PEER_ADDRESS = "10.77.0.2"  # the bridge's too: answers pings
SILENT_ADDRESS = "10.77.0.3"  # the bridge's too, but its firewall drops pings
GUEST_ADDRESS = "10.77.0.5"
MAC = "52:54:00:4c:00:01"

# The configuration service's stand-in, run under `ip netns exec`: answers each instance
# about itself only (Bearer token), and logs every request as a JSON line.
SERVICE = r"""
import http.server
import json
import sys
import xmlrpc.client
from pathlib import Path

address, port, instances_file, log_file, ready_file = sys.argv[1:]
INSTANCES = json.loads(Path(instances_file).read_text())


def log(entry):
    with open(log_file, "a") as f:
        f.write(json.dumps(entry) + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def send(self, status, body, content_type, chunked=False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 10):
                part = body[i : i + 10]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def json(self, status, value, chunked=False):
        self.send(status, json.dumps(value).encode(), "application/json", chunked)

    def allowed(self, instance, token=None):
        if token is None:
            header = self.headers.get("Authorization", "")
            token = header[len("Bearer "):] if header.startswith("Bearer ") else None
        known = INSTANCES.get(instance)
        return known is not None and token == known["token"]

    def handle_rest(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        parts = self.path.split("/")
        entry = {"method": method, "path": self.path, "body": body}
        if self.path == "/guest/RPC2" and method == "POST":
            params, name = xmlrpc.client.loads(body)
            entry["rpc"] = [name, *params]
            log(entry)
            return self.rpc(name, params)
        if parts[:4] != ["", "guest", "v1", "instances"] or len(parts) < 5:
            log(entry)
            return self.json(404, {"error": {"code": "not_found", "message": self.path}})
        instance, rest = parts[4], "/".join(parts[5:])
        entry["allowed"] = allowed = self.allowed(instance)
        log(entry)
        if not allowed:
            message = f"instance {instance} is not yours"
            return self.json(403, {"error": {"code": "forbidden", "message": message}})
        if method == "GET" and rest == "":
            known = INSTANCES[instance]
            return self.json(200, {"id": instance, "name": known["name"],
                                   "appliance": {"name": "netprobe"}})
        if method == "PUT" and rest == "status":
            return self.json(200, {"id": instance, "status": json.loads(body)["status"]})
        if method == "POST" and rest == "actions":
            action = json.loads(body)["action"]
            return self.json(202, {"id": instance, "action": action}, chunked=True)
        return self.json(404, {"error": {"code": "not_found", "message": self.path}})

    def rpc(self, name, params):
        if name not in ("lamina.get_instance", "lamina.get_variables",
                        "lamina.report_status", "lamina.request_action"):
            answer = xmlrpc.client.Fault(404, f"no method {name}")
        elif len(params) < 2 or not self.allowed(params[1], params[0]):
            answer = xmlrpc.client.Fault(403, "not yours")
        elif name == "lamina.get_instance":
            answer = ({"id": params[1], "name": INSTANCES[params[1]]["name"]},)
        elif name == "lamina.get_variables":
            answer = (INSTANCES[params[1]]["variables"],)
        else:
            answer = (True,)
        body = xmlrpc.client.dumps(answer, methodresponse=True, allow_none=True).encode()
        self.send(200, body, "text/xml")

    def do_GET(self):
        self.handle_rest("GET")

    def do_PUT(self):
        self.handle_rest("PUT")

    def do_POST(self):
        self.handle_rest("POST")


server = http.server.ThreadingHTTPServer((address, int(port)), Handler)
Path(ready_file).touch()
server.serve_forever()
"""

# A test-only layer on top: after the applications, what the guest sees, one line each.
CHECK = r"""#!/bin/sh
say() { echo "check: $*"; }
variable() { awk -F '\t' -v name="$1" '$1 == name { print substr($0, length(name) + 2); exit }' \
    /etc/lamina/variables; }
self="$(cat /run/lamina/config/instance 2>/dev/null)"
say "token $(stat -c '%a %U' /run/lamina/config/token 2>/dev/null || echo none)"
say "etc-lamina $(ls /etc/lamina | tr '\n' ' ')"
say "resolv.conf -> $(readlink /etc/resolv.conf)"
if [ -f /etc/resolv.conf ]; then
    while read -r line; do say "resolv ${line}"; done </etc/resolv.conf
fi
ip -4 route | while read -r line; do say "route ${line}"; done
if [ -n "$self" ]; then
    text="$(variable check_text)"
    out="$(su -s /bin/sh nobody -c 'lamina-config get' 2>&1)"
    say "nobody $? ${out}"
    out="$(lamina-config status "$text" 2>&1)"
    say "status $? ${out}"
    out="$(lamina-config action restart-me 2>&1)"
    say "action $? ${out}"
    out="$(lamina-config rpc lamina.report_status "$self" "$text" 2>&1)"
    say "rpc-status $? $(echo "$out" | tr -d '\n')"
    out="$(lamina-config rpc lamina.get_variables "$self" 2>&1)"
    say "rpc-variables $? $(echo "$out" | tr -d '\n')"
    out="$(lamina-config rpc lamina.get_instance not-mine 2>&1)"
    say "rpc-other $? $(echo "$out" | head -n 1)"
fi
say done
"""


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Channel:
    return build(tmp_path_factory.mktemp("channel"))


@pytest.fixture(scope="module")
def check_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("check")
    script = root / "tree" / "etc" / "lamina" / "start.d" / "90-check"
    script.parent.mkdir(parents=True)
    script.write_text(CHECK)
    script.chmod(0o755)
    image = root / "check.squashfs"
    subprocess.run(mksquashfs_argv(root / "tree", image), check=True, capture_output=True)
    return image


@dataclass
class Namespace:
    """A network namespace of the test's own, and the processes it started in it."""

    name: str
    root: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def run(self, *argv: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done.stdout

    def popen(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*self.prefix, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.processes.append(process)
        return process

    def bridge(self, name: str, *addresses: str) -> None:
        self.run("ip", "link", "add", name, "type", "bridge")
        for address in addresses:
            self.run("ip", "addr", "add", address, "dev", name)
        self.run("ip", "link", "set", name, "up")

    def tap(self, name: str, bridge: str) -> None:
        """A tap in the bridge before QEMU opens it: the guest's first DHCP packet is not
        lost to a port that is not there yet."""
        self.run("ip", "tuntap", "add", "dev", name, "mode", "tap")
        self.run("ip", "link", "set", name, "master", bridge, "up")

    def python(self, code: str, *args: str) -> str:
        return self.run(sys.executable, "-c", code, *args)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Namespace]:
    name = f"lamina-gn-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    ns = Namespace(name, tmp_path)
    try:
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        for process in ns.processes:
            stop(process)
        # Anything else still in the namespace was started there by this test.
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", name], check=True)


@dataclass(frozen=True)
class Subnet:
    bridge: str
    network: str  # 10.77.0.0
    domain: str
    hosts: tuple[tuple[str, str, str], ...]  # MAC, IP, name


def start_dnsmasq(ns: Namespace, subnets: list[Subnet], records: dict[str, str]) -> None:
    """dnsmasq as the agent runs it: static DHCP hosts only, the zones answered, nothing
    forwarded (no upstream in the namespace)."""
    lines = [
        "bind-interfaces", "except-interface=lo", "no-resolv", "no-hosts", "no-poll",
        "user=root", "dhcp-authoritative", "log-dhcp", "log-queries",
        f"dhcp-leasefile={ns.root / 'dnsmasq.leases'}",
    ]  # fmt: skip
    for n, subnet in enumerate(subnets):
        lines += [
            f"interface={subnet.bridge}",
            f"dhcp-range=set:n{n},{subnet.network},static,255.255.255.0,1h",
            f"domain={subnet.domain},{subnet.network}/24",
        ]
        lines += [f"dhcp-host={mac},{ip},{host}" for mac, ip, host in subnet.hosts]
        lines += [f"host-record={host}.{subnet.domain},{ip}" for _, ip, host in subnet.hosts]
    lines += [f"host-record={name},{ip}" for name, ip in records.items()]
    conf = ns.root / "dnsmasq.conf"
    conf.write_text("".join(f"{line}\n" for line in lines))
    process = ns.popen(
        ["dnsmasq", "--keep-in-foreground", "--log-facility=-", f"--conf-file={conf}"],
        ns.root / "dnsmasq.log",
    )
    time.sleep(0.3)
    assert process.poll() is None, (ns.root / "dnsmasq.log").read_text()


@dataclass
class Service:
    log: Path

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def start_service(ns: Namespace, instances: dict[str, dict[str, Any]]) -> Service:
    script = ns.root / "service.py"
    script.write_text(SERVICE)
    known = ns.root / "instances.json"
    known.write_text(json.dumps(instances))
    log, ready = ns.root / "requests.jsonl", ns.root / "service.ready"
    process = ns.popen(
        [sys.executable, str(script), SERVICE_ADDRESS, "80", str(known), str(log), str(ready)],
        ns.root / "service.log",
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert process.poll() is None, (ns.root / "service.log").read_text()
        assert time.monotonic() < deadline, "the configuration service did not start"
        time.sleep(0.1)
    return Service(log)


def nic_options(nics: list[tuple[str, str]]) -> list[str]:
    """QEMU options for virtio NICs on existing taps (tap name, MAC), in order: eth0 first."""
    options = []
    for n, (tap, mac) in enumerate(nics):
        options += [
            "-netdev", f"tap,id=n{n},ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n{n},mac={mac}",
        ]  # fmt: skip
    return options


def uptime(text: str) -> float:
    found = [line for line in guest_lines(text) if line.startswith("lamina-base: uptime ")]
    assert len(found) == 1, text
    return float(found[0].split()[2])


def check_lines(text: str, key: str) -> list[str]:
    prefix = f"check: {key} "
    return [line.removeprefix(prefix) for line in guest_lines(text) if line.startswith(prefix)]


def check_line(text: str, key: str) -> str:
    found = check_lines(text, key)
    assert len(found) == 1, f"expected one 'check: {key}' line in:\n{text}"
    return found[0]


SEND_MAIL = """
import smtplib, sys
from email.message import EmailMessage
message = EmailMessage()
message["From"] = "tester@example.org"
message["To"] = "postmaster@mail.example.net"
message["Subject"] = "hello from the namespace"
message.set_content("first line\\n.a line starting with a dot\\nlast line\\n")
with smtplib.SMTP(sys.argv[1], 25, timeout=60) as smtp:
    print(smtp.ehlo()[0])
    print(smtp.send_message(message))
"""

FETCH = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=120) as answer:
    sys.stdout.write(answer.read().decode())
"""


def test_a_guest_on_a_network(
    channel: Channel, check_layer: Path, net: Namespace, tmp_path: Path
) -> None:
    """netprobe, mailserv and the test's checks on one instance with one NIC: its DHCP
    address, names and addresses it reaches, the configuration service answering it about
    itself only (REST and XML-RPC), mail delivered into its instance layer, and neither the
    token nor the resolver's configuration ever in that layer."""
    net.bridge("br0", f"{SERVICE_ADDRESS}/24", f"{PEER_ADDRESS}/24", f"{SILENT_ADDRESS}/24")
    rules = net.root / "rules.nft"
    rules.write_text(
        "table inet probe {\n  chain input {\n    type filter hook input priority 0;\n"
        f"    ip daddr {SILENT_ADDRESS} icmp type echo-request drop\n  }}\n}}\n"
    )
    net.run("nft", "-f", str(rules))
    start_dnsmasq(
        net,
        [Subnet("br0", "10.77.0.0", ZONE, ((MAC, GUEST_ADDRESS, "vm1"),))],
        {"lamina.local": SERVICE_ADDRESS, f"peer.{ZONE}": PEER_ADDRESS},
    )
    self_id, other_id = str(uuid.uuid4()), str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    text = 'tab\there "quoted" back\\slash <b>&amp;</b> \u00e9'
    variables = {
        "names": f"peer peer.{ZONE} vm1.{ZONE} nowhere.{ZONE}",
        "addresses": f"{SERVICE_ADDRESS} {PEER_ADDRESS} {SILENT_ADDRESS}",
        "others": other_id,
        "port": "80",
        "domain": "mail.example.net",
        "check_text": text,
    }
    service = start_service(
        net,
        {
            self_id: {"token": token, "name": "vm1", "variables": variables},
            other_id: {"token": secrets.token_urlsafe(32), "name": "vm2", "variables": {}},
        },
    )
    net.tap("lmt0", "br0")
    upper = make_upper(tmp_path / "upper.img")
    config = make_config(
        tmp_path / "config.tar",
        variables,
        ["/etc/mailserv/domain"],
        "vm1",
        {"instance": f"{self_id}\n", "token": f"{token}\n"},
    )
    disks = [
        Disk("l0", channel.layers["lamina-base"]),
        Disk("l1", channel.layers["netprobe"]),
        Disk("l2", channel.layers["mailserv"]),
        Disk("l3", check_layer),
        Disk("upper", upper, False),
        Disk("config", config),
    ]
    console, monitor_path = tmp_path / "console.log", tmp_path / "qmp.sock"
    qemu = start(channel, ["l0", "l1", "l2", "l3"], disks, console,
                 *nic_options([("lmt0", MAC)]), "-qmp", f"unix:{monitor_path},server=on,wait=off",
                 prefix=net.prefix)  # fmt: skip
    net.processes.append(qemu)
    try:
        booted = wait_ready(qemu, console)
        assert_ready(booted)
        got = guest_lines(booted)
        assert f"lamina-init: instance {self_id}" in got, booted
        assert token not in booted
        assert (
            f"lamina-base: eth0 {GUEST_ADDRESS}/24 gw {SERVICE_ADDRESS} dns {SERVICE_ADDRESS} "
            f"domain {ZONE}"
        ) in got, booted
        assert "mailserv: accepting mail for mail.example.net on port 25" in got, booted
        print(f"boot to ready with a NIC: {uptime(booted)} s")

        # What the guest sees (the check layer's lines come before ready).
        assert check_line(booted, "token") == "600 root"
        assert check_line(booted, "etc-lamina").split() == [
            "hostname",
            "start.d",
            "templates",
            "variables",
        ]
        assert check_line(booted, "resolv.conf ->") == "/run/resolv.conf"
        assert check_lines(booted, "resolv") == [f"search {ZONE}", f"nameserver {SERVICE_ADDRESS}"]
        routes = check_lines(booted, "route")
        assert [r.split()[:5] for r in routes if r.startswith("default")] == [
            ["default", "via", SERVICE_ADDRESS, "dev", "eth0"]
        ], routes
        assert check_line(booted, "nobody").startswith(
            "3 lamina-config: cannot read /run/lamina/config/token (root only)"
        )
        assert check_line(booted, "status") == "0 " + json.dumps({"id": self_id, "status": text})
        assert check_line(booted, "action") == "0 " + json.dumps(
            {"id": self_id, "action": "restart-me"}
        )
        assert check_line(booted, "rpc-status").startswith("0 <?xml")
        assert "<boolean>1</boolean>" in check_line(booted, "rpc-status")
        assert "<name>domain</name><value><string>mail.example.net</string>" in check_line(
            booted, "rpc-variables"
        )
        assert check_line(booted, "rpc-other") == "1 lamina-config: refused: fault 403 not yours"

        # netprobe runs in the background: the boot does not wait for its pings.
        wait_line(qemu, console, r"netprobe: done")
        probe = guest_lines(console.read_text(errors="replace"))
        for expected in (
            f"netprobe: resolve peer -> {PEER_ADDRESS}",  # the search domain applies
            f"netprobe: resolve peer.{ZONE} -> {PEER_ADDRESS}",
            f"netprobe: resolve vm1.{ZONE} -> {GUEST_ADDRESS}",
            f"netprobe: resolve lamina.local -> {SERVICE_ADDRESS}",
            f"netprobe: resolve nowhere.{ZONE} failed",
            f"netprobe: reach {SERVICE_ADDRESS} ok",
            f"netprobe: reach {PEER_ADDRESS} ok",
            f"netprobe: reach {SILENT_ADDRESS} failed",
            "netprobe: config self ok vm1",
            f"netprobe: config {other_id} refused 403",
            "netprobe: rpc self ok",
            f"netprobe: rpc {other_id} refused",
            "netprobe: status ok",
        ):
            assert expected in probe, f"no {expected!r} in:\n" + "\n".join(probe)

        # Mail from the namespace, into the instance layer; the probe again, over HTTP.
        mark = len(guest_lines(console.read_text(errors="replace")))
        sent = net.python(SEND_MAIL, GUEST_ADDRESS)
        assert sent.split("\n")[:2] == ["250", "{}"], sent
        stored = wait_line(qemu, console, r"mailserv: stored /var/mail/new/\S+", mark)
        page = net.python(FETCH, f"http://{GUEST_ADDRESS}/cgi-bin/probe")
        assert "netprobe: config self ok vm1" in page, page
        assert page.rstrip().endswith("netprobe: done"), page

        monitor = Qmp(monitor_path)
        power_off(qemu, monitor, console)
        monitor.close()
    finally:
        stop(qemu)

    # What the configuration service was asked, and whether it said yes.
    requests = service.requests()
    asked = [(r["method"], r["path"].removeprefix("/guest/"), r.get("allowed")) for r in requests]
    assert ("GET", f"v1/instances/{self_id}", True) in asked
    assert ("GET", f"v1/instances/{other_id}", False) in asked
    assert ("PUT", f"v1/instances/{self_id}/status", True) in asked
    assert ("POST", f"v1/instances/{self_id}/actions", True) in asked
    assert not [r for r in requests if r.get("allowed") is False and other_id not in r["path"]]
    statuses = [json.loads(r["body"]) for r in requests if r["path"].endswith("/status")]
    assert {"status": text} in statuses and {"status": "probed"} in statuses
    rpcs = [r["rpc"] for r in requests if "rpc" in r]
    assert ["lamina.report_status", token, self_id, text] in rpcs
    assert ["lamina.get_instance", token, other_id] in rpcs

    # The instance layer after a clean power-off: the message, no token, no resolver.
    dump = tmp_path / "upper"
    dump.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump /data {dump}", str(upper)], check=True,
                   capture_output=True)  # fmt: skip
    layer = dump / "data"
    message = (layer / stored.removeprefix("mailserv: stored /")).read_text()
    assert "Return-Path: <tester@example.org>" in message, message
    assert "Delivered-To: postmaster@mail.example.net" in message, message
    assert "Subject: hello from the namespace" in message, message
    assert "\n.a line starting with a dot\n" in message, message
    assert not (layer / "etc" / "resolv.conf").exists()
    assert not (layer / "etc" / "lamina" / "token").exists()
    for path in layer.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path


def test_a_secondary_nic_gets_an_address_only(
    channel: Channel, check_layer: Path, net: Namespace, tmp_path: Path
) -> None:
    """eth0 and eth1 on two networks, each with its DHCP server, router and domain; eth2 on
    a bridge without one. eth1 gets its address but neither the default route nor the DNS
    configuration; eth2 is reported without a lease after the wait; webserv's page answers
    on both addresses."""
    net.bridge("br0", f"{SERVICE_ADDRESS}/24")
    net.bridge("br1", "10.78.0.1/24")
    net.bridge("br2", "10.79.0.1/24")
    macs = ["52:54:00:4c:01:00", "52:54:00:4c:01:01", "52:54:00:4c:01:02"]
    start_dnsmasq(
        net,
        [
            Subnet("br0", "10.77.0.0", ZONE, ((macs[0], GUEST_ADDRESS, "web1"),)),
            Subnet("br1", "10.78.0.0", "other.lamina.internal", ((macs[1], "10.78.0.5", "web1"),)),
        ],
        {"lamina.local": SERVICE_ADDRESS},
    )
    for n in range(3):
        net.tap(f"lmt{n}", f"br{n}")
    upper = make_upper(tmp_path / "upper.img")
    config = make_config(
        tmp_path / "config.tar",
        {"domain": "example.org", "port": "80"},
        ["/etc/webserv/site.conf", "/srv/www/index.html"],
        "web1",
    )
    disks = [
        Disk("l0", channel.layers["lamina-base"]),
        Disk("l1", channel.layers["webserv"]),
        Disk("l2", check_layer),
        Disk("upper", upper, False),
        Disk("config", config),
    ]
    console = tmp_path / "console.log"
    nics = nic_options([(f"lmt{n}", mac) for n, mac in enumerate(macs)])
    qemu = start(channel, ["l0", "l1", "l2"], disks, console, *nics, prefix=net.prefix)
    net.processes.append(qemu)
    try:
        booted = wait_ready(qemu, console)
        assert_ready(booted)
        got = guest_lines(booted)
        assert (
            f"lamina-base: eth0 {GUEST_ADDRESS}/24 gw {SERVICE_ADDRESS} dns {SERVICE_ADDRESS} "
            f"domain {ZONE}"
        ) in got, booted
        assert "lamina-base: eth1 10.78.0.5/24 secondary" in got, booted
        assert (
            "lamina-base: eth2 no DHCP lease after 15 s; still asking in the background" in got
        ), booted
        print(f"boot to ready with three NICs, one without DHCP: {uptime(booted)} s")
        routes = check_lines(booted, "route")
        assert [r.split()[:5] for r in routes if r.startswith("default")] == [
            ["default", "via", SERVICE_ADDRESS, "dev", "eth0"]
        ], routes
        assert any(r.startswith("10.78.0.0/24 dev eth1") for r in routes), routes
        assert not any("eth2" in r for r in routes), routes
        assert check_lines(booted, "resolv") == [f"search {ZONE}", f"nameserver {SERVICE_ADDRESS}"]
        assert check_line(booted, "token") == "none"
        for address in (GUEST_ADDRESS, "10.78.0.5"):
            page = net.python(FETCH, f"http://{address}/")
            assert "<title>Welcome to example.org</title>" in page, page
    finally:
        stop(qemu)


def test_a_guest_without_a_nic_boots_as_before(
    channel: Channel, check_layer: Path, tmp_path: Path
) -> None:
    """No NIC, and a config disk without instance or token (as before networks): no DHCP
    wait, no network lines; netprobe says what it cannot reach."""
    upper = make_upper(tmp_path / "upper.img")
    config = make_config(tmp_path / "config.tar", {"names": "lamina.local"}, [], "lonely")
    disks = [
        Disk("l0", channel.layers["lamina-base"]),
        Disk("l1", channel.layers["netprobe"]),
        Disk("l2", check_layer),
        Disk("upper", upper, False),
        Disk("config", config),
    ]
    console = tmp_path / "console.log"
    qemu = start(channel, ["l0", "l1", "l2"], disks, console)
    try:
        booted = wait_ready(qemu, console)
        assert_ready(booted)
        got = guest_lines(booted)
        print(f"boot to ready without a NIC: {uptime(booted)} s")
        assert not any(re.match(r"lamina-base: eth\d", line) for line in got), booted
        assert not any(line.startswith("lamina-init: instance") for line in got), booted
        assert check_line(booted, "token") == "none"
        assert check_lines(booted, "route") == []
        wait_line(qemu, console, r"netprobe: done")
        probe = guest_lines(console.read_text(errors="replace"))
        assert "netprobe: resolve lamina.local failed" in probe
        assert (
            "netprobe: config self failed no /run/lamina/config/instance: this instance has no "
            "configuration service"
        ) in probe, probe
    finally:
        stop(qemu)


@pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (bind9-dnsutils)")
def test_dnsserv_answers_on_its_network_address(
    channel: Channel, net: Namespace, tmp_path: Path
) -> None:
    """dnsserv asked with dig on its network address, from the host's address on the network
    (10.77.0.1) and from one beyond it (10.88.0.1, whose answers go back through the guests'
    default route): "mine" (allow_from empty) answers its own network only, "theirs"
    (allow_from 10.88.0.0/24 192.0.2.0/24) the networks named only, over UDP and TCP; the
    zone's own name, its records, no such name for others in the zone. "bad" (a CIDR without
    its length) answers no one."""
    inside, beyond = SERVICE_ADDRESS, "10.88.0.1"
    net.bridge("br0", f"{inside}/24", f"{beyond}/32")
    guests = {
        "mine": ("52:54:00:4c:02:01", "10.77.0.5", ""),
        "theirs": ("52:54:00:4c:02:02", "10.77.0.6", "10.88.0.0/24 192.0.2.0/24"),
        "bad": ("52:54:00:4c:02:03", "10.77.0.7", "10.88.0.0/24 10.1.2.3"),
    }
    start_dnsmasq(
        net,
        [Subnet("br0", "10.77.0.0", ZONE, tuple((m, ip, n) for n, (m, ip, _) in guests.items()))],
        {"lamina.local": SERVICE_ADDRESS},
    )
    qemus, consoles = {}, {}
    for n, (name, (mac, _, allow_from)) in enumerate(guests.items()):
        net.tap(f"lmt{n}", "br0")
        variables = {
            "domain": "example.org",
            "address": "192.0.2.53",
            "records": "www=192.0.2.54 a.b=192.0.2.55",
            "allow_from": allow_from,
        }
        disks = [
            Disk("l0", channel.layers["lamina-base"]),
            Disk("l1", channel.layers["dnsserv"]),
            Disk("upper", make_upper(tmp_path / f"{name}-upper.img"), False),
            Disk("config", make_config(tmp_path / f"{name}.tar", variables, [], name)),
        ]
        consoles[name] = tmp_path / f"{name}.log"
        qemus[name] = start(channel, ["l0", "l1"], disks, consoles[name],
                            *nic_options([(f"lmt{n}", mac)]), prefix=net.prefix)  # fmt: skip
        net.processes.append(qemus[name])
    try:
        booted = {name: wait_ready(qemus[name], consoles[name]) for name in guests}
        # A bad allow_from: nothing answers rather than everyone.
        bad = guest_lines(booted.pop("bad"))
        assert "dnsserv: bad allow_from 10.1.2.3: an IPv4 network (a.b.c.d/n) expected" in bad, bad
        assert "lamina-base: /etc/lamina/start.d/50-dnsserv failed (1)" in bad, bad
        assert dig(net.prefix, guests["bad"][1], "example.org", inside) == ("no answer", [])
        for name, (_, ip, allow_from) in list(guests.items())[:2]:
            assert_ready(booted[name])
            got = guest_lines(booted[name])
            assert "dnsserv: example.org -> 192.0.2.53" in got, booted[name]
            assert f"dnsserv: answering on {ip} (eth0)" in got, booted[name]
            clients = allow_from or "on its own networks"
            assert f"dnsserv: clients {clients}" in got, booted[name]
            print(f"{name}: boot to ready {uptime(booted[name])} s")

        mine, theirs = guests["mine"][1], guests["theirs"][1]
        for server, source in ((mine, inside), (theirs, beyond)):
            for options in ((), ("+tcp",)):
                ask = (server, source, *options)
                assert dig(net.prefix, server, "example.org", source, *options) == (
                    "NOERROR",
                    ["192.0.2.53"],
                ), ask
            assert dig(net.prefix, server, "www.example.org", source) == ("NOERROR", ["192.0.2.54"])
            assert dig(net.prefix, server, "a.b.example.org", source) == ("NOERROR", ["192.0.2.55"])
            assert dig(net.prefix, server, "nope.example.org", source) == ("NXDOMAIN", [])
            assert dig(net.prefix, server, "example.net", source)[0] == "REFUSED"
        # Outside allow_from: no answer at all, over UDP or TCP.
        for server, source in ((mine, beyond), (theirs, inside)):
            for options in ((), ("+tcp",)):
                answer = dig(net.prefix, server, "example.org", source, *options)
                assert answer == ("no answer", []), (server, source, options)
    finally:
        for qemu in qemus.values():
            stop(qemu)
