"""Floating forward addresses for real (the ``vxlan`` branch's ``lamina.agent.floating`` and
``ForwardTable``), in a network namespace standing for a host on a data-centre network
with a neighbour: a forward binding an address of that network that is not the host's own
adds it to the interface and announces it (the neighbour learns the host's MAC from the
gratuitous ARP and reaches the guest's port through it); the address stays while another
forward uses it and goes with the last; a restarted agent takes it back.

Written by helper ``sched`` beside the ``vxlan`` branch (its floating addresses had no test
of their own): skipped until ``lamina.agent.floating`` is merged."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from namespaces import Namespaces, in_ns, sh

pytest.importorskip("lamina.agent.floating")
pytestmark = pytest.mark.integration

SUBNET = "10.97.77"
FLOATING = f"{SUBNET}.100"

#: Runs inside the host's namespace: an echo "guest" on 127.0.0.1, the agent's forward
#: table, and a line of JSON in, a line of JSON out for each thing the test asks.
DRIVER = r"""
import json, socket, sys, threading
from pathlib import Path
from lamina.agent.forwards import ForwardTable
from lamina.wire.protocol import NetworkSpec, PortForward

NET = "net-0123456789abcdef"
LOOP = NetworkSpec(network=NET, name="lo", cidr="127.0.0.0/8", address="127.0.0.1",
                   domain="lo.lamina.internal")
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
def serve():
    while True:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"guest:" + conn.recv(100))
threading.Thread(target=serve, daemon=True).start()
path = Path(sys.argv[1])
table = ForwardTable(path, "", lambda: {NET: LOOP})
for line in sys.stdin:
    ask = json.loads(line)
    try:
        if ask["do"] == "put":
            spec = PortForward(network=NET, bind=ask["bind"], host_port=ask["port"],
                               guest_ip="127.0.0.1", guest_port=server.getsockname()[1])
            answer = table.put(ask["forward"], spec).model_dump()
        elif ask["do"] == "delete":
            table.delete(ask["forward"])
            answer = {}
        elif ask["do"] == "restart":
            table.close()
            table = ForwardTable(path, "", lambda: {NET: LOOP})
            table.restore()
            answer = {}
        else:
            break
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer), flush=True)
"""


class Driver:
    def __init__(self, namespace: str, folder: Path) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", DRIVER,
             str(folder / "forwards.json")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def ask(self, **ask: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(ask) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the driver ended"
        answer: dict[str, Any] = json.loads(line)
        assert "error" not in answer, answer
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def net(namespaces: Namespaces) -> tuple[str, str]:
    """(host, neighbour): two namespaces on one link, 10.97.77.11 and .2, the neighbour
    accepting gratuitous ARP (as a switch or router that learns them)."""
    host, neighbour = namespaces.make("fhost"), namespaces.make("fnb")
    end = namespaces.veth(host, neighbour)
    sh("ip", "-n", host, "addr", "add", f"{SUBNET}.11/24", "dev", "eth0")
    sh("ip", "-n", host, "link", "set", "eth0", "up")
    for key in ("all", "default"):
        in_ns(neighbour, "sysctl", "-qw", f"net.ipv4.conf.{key}.arp_accept=1")
    sh("ip", "-n", neighbour, "link", "set", end, "name", "eth0")
    in_ns(neighbour, "sysctl", "-qw", "net.ipv4.conf.eth0.arp_accept=1")
    sh("ip", "-n", neighbour, "addr", "add", f"{SUBNET}.2/24", "dev", "eth0")
    sh("ip", "-n", neighbour, "link", "set", "eth0", "up")
    return host, neighbour


@pytest.fixture
def driver(net: tuple[str, str], tmp_path: Path) -> Iterator[Driver]:
    made = Driver(net[0], tmp_path)
    yield made
    made.close()


def addresses(namespace: str) -> list[str]:
    shown = json.loads(in_ns(namespace, "ip", "-j", "addr", "show", "dev", "eth0"))
    return [
        f"{a['local']}/{a['prefixlen']}" for a in shown[0]["addr_info"] if a["family"] == "inet"
    ]


def mac(namespace: str) -> str:
    return str(
        json.loads(in_ns(namespace, "ip", "-j", "link", "show", "dev", "eth0"))[0]["address"]
    )


def learned(neighbour: str) -> str | None:
    shown = json.loads(in_ns(neighbour, "ip", "-j", "neigh", "show", FLOATING))
    return shown[0].get("lladdr") if shown else None


def fetch(neighbour: str, port: int) -> str:
    code = (
        f"import socket; s = socket.create_connection(('{FLOATING}', {port}), timeout=5); "
        "s.sendall(b'hi'); print(s.recv(100).decode())"
    )
    return in_ns(neighbour, sys.executable, "-c", code).strip()


def test_a_floating_address_comes_and_goes_with_its_forwards(
    net: tuple[str, str], driver: Driver
) -> None:
    host, neighbour = net
    first = driver.ask(do="put", forward="fwd-00000001", bind=FLOATING, port=8080)
    assert first["floating"] == "eth0"
    assert f"{FLOATING}/32" in addresses(host)
    # Announced: the neighbour learns the host's MAC for it without asking.
    deadline = time.monotonic() + 10
    while learned(neighbour) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert learned(neighbour) == mac(host)
    assert fetch(neighbour, 8080) == "guest:hi"

    # A second forward on the same address shares it; the host's own address never floats.
    second = driver.ask(do="put", forward="fwd-00000002", bind=FLOATING, port=8081)
    assert second["floating"] == "eth0"
    own = driver.ask(do="put", forward="fwd-00000003", bind=f"{SUBNET}.11", port=8082)
    assert own["floating"] is None
    driver.ask(do="delete", forward="fwd-00000001")
    assert f"{FLOATING}/32" in addresses(host)  # still used by the second
    assert fetch(neighbour, 8081) == "guest:hi"

    # Gone from the interface (say, by hand) while the agent was down: taken back at start.
    sh("ip", "-n", host, "addr", "del", f"{FLOATING}/32", "dev", "eth0")
    driver.ask(do="restart")
    assert f"{FLOATING}/32" in addresses(host)
    assert fetch(neighbour, 8081) == "guest:hi"

    driver.ask(do="delete", forward="fwd-00000002")
    assert f"{FLOATING}/32" not in addresses(host)
    assert addresses(host) == [f"{SUBNET}.11/24"]
