"""Live migration of an idle 256 MiB layered guest through Lamina, beside ``virsh migrate
--live`` of the same guest between the same two namespace hosts, in one run.

Run from the repository root, as root (namespace hosts need it)::

    .venv/bin/python benchmarks/migration.py [--no-network]

1. Two namespace hosts (``lamina.launcher.nshosts``: a netns, a private mount namespace and a
   libvirtd each, one bridge), a manager in the root namespace and an agent inside each host
   (``migration.transport = "tcp"``: the lab's plain TCP).
2. The sample channel's ``webserv`` deployed with 256 MiB on h1 (on a network unless
   ``--no-network``), and once on h2 so that h2's cache already holds its layers: the move
   must copy none of them again.
3. ``lamina instance migrate web --host h2 --live``: the job's wall time, the downtime libvirt
   measured (the destination's completed job), the bytes moved (memory, instance layer,
   layers fetched). With a network, the guest is pinged every 10 ms from the other host's
   side of the network (``ping -i 0.01`` from h1's namespace, through the network's tunnel
   once the guest is on h2): the longest gap between two replies is the downtime a peer sees.
4. The same guest moved back h2 -> h1 with ``virsh migrate --live --p2p --copy-storage-inc``
   (the recipe of MACHINE-NOTES: ``dumpxml --migratable``, paths rewritten, the instance
   layer pre-created with its size, the config disk copied): the same figures.

5. The sample ``ticker`` (256 MiB, a counter on its console) checkpointed where it runs and
   restored on the other host (``benchmarks/checkpoint.measure``): both times against the
   5 s target, and until it counts on again (same-host figures beside ``virsh save`` and
   ``virsh restore``: ``benchmarks/checkpoint.py``).

Prints the figures and Lamina's as ratios of virsh's. Everything is removed at the end. It
never fails because a figure is slow. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from boot import PRODUCTION_DEFAULTS, ratio  # noqa: E402
from checkpoint import TARGET_S, cell, measure, ticks  # noqa: E402
from harness import Cloud, wait_until  # noqa: E402
from hosts import add_lab_host, manager_env  # noqa: E402
from test_layered_appliances import Channel  # noqa: E402

from lamina.launcher.nshosts import Lab, NamespaceHost  # noqa: E402

MIB = 1024 * 1024
BOOT = 240


#: Sends an ICMP echo to argv[1] every 10 ms and prints the time of each reply (a raw
#: socket: no ping binary needed), until killed.
PING = r"""
import os, socket, struct, sys, threading, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def checksum(b):
    total = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
def send():
    seq = 0
    while True:
        seq = (seq + 1) & 0xFFFF
        head = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xFFFF, seq)
        s.sendto(struct.pack("!BBHHH", 8, 0, checksum(head + b"lamina"),
                             os.getpid() & 0xFFFF, seq) + b"lamina", (sys.argv[1], 0))
        time.sleep(0.01)
threading.Thread(target=send, daemon=True).start()
while True:
    data, addr = s.recvfrom(2048)
    if addr[0] == sys.argv[1] and data[20] == 0:
        print("%.6f" % time.time(), flush=True)
"""


class Pinger:
    """An ICMP echo to ``address`` every 10 ms from inside ``host``; the longest gap
    between two replies once stopped."""

    def __init__(self, host: NamespaceHost, address: str) -> None:
        argv = host.enter([sys.executable, "-c", PING, address])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.times: list[float] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.times.append(float(line))

    def stop(self) -> float:
        """The longest gap in milliseconds (NaN without two replies)."""
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.thread.join(5)
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return max(gaps) * 1000 if gaps else float("nan")


def free_subnet() -> str:
    used = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        prefix = f"10.95.{random.randrange(256)}."
        if prefix not in used:
            return prefix + "0/24"
    raise SystemExit("no free 10.95.X.0/24 subnet")


def received(host: NamespaceHost) -> int:
    """Bytes the host has received on its link to the data-centre network (``eth0`` of its
    namespace, ``lamina.launcher.nshosts``)."""
    [link] = json.loads(host.run("ip", "-s", "-j", "link", "show", "eth0"))
    return int(link["stats64"]["rx"]["bytes"])


def completed(host: NamespaceHost, name: str) -> dict[str, float]:
    """The destination's record of the completed migration (``domjobinfo --completed``)."""
    text = host.virsh("domjobinfo", name, "--completed", "--keep-completed")
    figures: dict[str, float] = {}
    units = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}
    for label, key in (
        ("Total downtime", "downtime_ms"),
        ("Memory processed", "memory_bytes"),
        ("File processed", "disk_bytes"),
        ("Time elapsed", "elapsed_ms"),
    ):
        match = re.search(rf"^{label}:\s+([\d.]+)\s+(\S+)", text, re.M)
        if match:
            value = float(match[1])
            figures[key] = value * units.get(match[2], 1) if match[2] in units else value
    return figures


def virsh_move(src: NamespaceHost, dest: NamespaceHost, name: str, scratch: Path) -> dict[str, Any]:
    """Move ``name`` from ``src`` to ``dest`` as an administrator would with virsh alone."""
    xml = ET.fromstring(src.virsh("dumpxml", "--migratable", name))
    scratch.mkdir(parents=True, exist_ok=True)
    copy: list[str] = []
    for disk in xml.iterfind("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if disk.get("type") != "file" or source is None or target is None:
            continue
        path = Path(source.get("file", ""))
        if path.suffix != ".img":
            continue  # a cached layer: the same file is readable on both (shared folder)
        new = scratch / path.name
        if disk.find("readonly") is not None:
            shutil.copyfile(path, new)
        else:
            size = json.loads(
                subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                               capture_output=True, text=True, check=True).stdout
            )["virtual-size"]  # fmt: skip
            subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(new), str(size)],
                           check=True)  # fmt: skip
            copy.append(str(target.get("dev")))
        source.set("file", str(new))
    for element in xml.iterfind("devices/serial/source"):
        element.set("path", str(scratch / "console.log"))
    for element in xml.iterfind("devices/console/source"):
        element.set("path", str(scratch / "console.log"))
    dest_xml = scratch / "dest.xml"
    dest_xml.write_text(ET.tostring(xml, encoding="unicode"))
    before = received(dest)
    started = time.monotonic()
    src.run(
        "virsh", "-c", "qemu:///system", "migrate", "--live", "--p2p", "--persistent",
        "--undefinesource", "--copy-storage-inc", "--migrate-disks", ",".join(copy),
        "--xml", str(dest_xml), name, f"qemu+tcp://{dest.address}/system",
        f"tcp://{dest.address}", timeout=600,
    )  # fmt: skip
    seconds = time.monotonic() - started
    return {"seconds": seconds, "wire_bytes": received(dest) - before, **completed(dest, name)}


def checkpoints(client: Any, hosts: dict[str, NamespaceHost]) -> None:
    """The sample ``ticker`` (a counter on its console, 256 MiB) checkpointed where it runs and
    restored on the other host, through the repository: the times of both, and how long
    until it counts again there (from where it was)."""
    client.wait_job(client.install_appliance("ticker")["job"]["id"], timeout=300)
    deployed = client.deploy_appliance("ticker", "tick", {}, memory_mib=256, networks=[])
    client.wait_job(deployed["job"]["id"], timeout=300)
    wait_until(lambda: ticks(client, "tick")[0], BOOT, "ticker counting")
    time.sleep(3)  # idle
    here = client.instance("tick")["host"]
    other = next(name for name in hosts if name != here)
    figures = measure(client, "tick", 1, host=other)
    print(f"\nCheckpoint on {here}, restored on {other} (ticker, 256 MiB, TCG):")
    print(f"  {'lamina instance checkpoint':34}{cell(figures.taken):>26}  <= {TARGET_S:.0f} s")
    print(f"  {'  guest paused':34}{cell(figures.paused):>26}")
    print(
        f"  {'lamina instance restore --host':34}{cell(figures.restored):>26}  <= {TARGET_S:.0f} s"
    )
    print(f"  {'  ... counting again':34}{cell(figures.ticking):>26}")
    print(f"  checkpoint size {figures.size / MIB:.1f} MiB; same-host figures and virsh save/"
          "restore beside them: benchmarks/checkpoint.py")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-network", action="store_true", help="no network, no pinger")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lamina-bench-migration-"))
    lab = Lab(f"lb{uuid.uuid4().hex[:6]}", root / "lab", free_subnet())
    cloud: Cloud | None = None
    try:
        h1, h2 = lab.add_hosts(["h1", "h2"])
        cloud = Cloud(root / "cloud", **PRODUCTION_DEFAULTS, LAMINA_MIGRATION__TRANSPORT="tcp")
        cloud.base_env.update(manager_env(lab, cloud))
        cloud.start_manager()
        for host in (h1, h2):
            add_lab_host(cloud, host)
        client = cloud.client()
        subprocess.run(["bash", str(ROOT / "scripts/build-sample-channel.sh"),
                        str(root / "channel")], check=True, capture_output=True)  # fmt: skip
        channel = Channel(root / "channel")
        client.add_channel(channel.url, channel.token)
        client.wait_job(client.install_appliance("webserv")["job"]["id"], timeout=300)
        networks: list[dict[str, Any]] = []
        if not args.no_network:
            client.create_network("bench", "10.94.0.0/24")
            networks = [{"network": "bench", "ip": "10.94.0.10"}]
        answer = client.deploy_appliance("webserv", "web", {"domain": "bench.example.org"},
                                         memory_mib=256, networks=networks)  # fmt: skip
        client.wait_job(answer["job"]["id"], timeout=300)
        wait_until(lambda: "lamina-base: ready" in client.console("web")["data"], BOOT, "web up")
        hosts = {h.name: h for h in (h1, h2)}
        here = client.instance("web")["host"]
        src, dest = hosts[here], hosts["h2" if here == "h1" else "h1"]
        # The destination caches the layers first (another instance of the appliance moved
        # there): the measured move must copy none of them again.
        warm = client.deploy_appliance("webserv", "warm", {"domain": "warm.example.org"},
                                       memory_mib=64, networks=[])  # fmt: skip
        client.wait_job(warm["job"]["id"], timeout=300)
        if client.instance("warm")["host"] != dest.name:
            moved = client.migrate_instance("warm", dest.name)
            client.wait_job(moved["id"], timeout=600)
        if networks:
            # Keeps the network on the source once the guest left it, for virsh's move back.
            anchor = client.deploy_appliance(
                "webserv", "anchor", {"domain": "a.example.org"}, memory_mib=64,
                networks=[{"network": "bench"}],
            )  # fmt: skip
            client.wait_job(anchor["job"]["id"], timeout=300)
            if client.instance("anchor")["host"] != src.name:
                client.wait_job(client.migrate_instance("anchor", src.name)["id"], timeout=600)
        time.sleep(5)  # idle
        name = f"lamina-{client.instance('web')['id']}"

        pinger = Pinger(src, "10.94.0.10") if networks else None
        before = received(dest)
        started = time.monotonic()
        job = client.wait_job(client.migrate_instance("web", dest.name, "live")["id"], 900)
        lamina_seconds = time.monotonic() - started
        lamina_wire = received(dest) - before
        time.sleep(1)
        lamina_gap = pinger.stop() if pinger else float("nan")
        if job["status"] != "succeeded":
            raise SystemExit(f"lamina's migration {job['status']}: {job['error']}")
        result = job["result"]

        pinger = Pinger(dest, "10.94.0.10") if networks else None
        bare = virsh_move(dest, src, name, root / "virsh")
        time.sleep(1)
        virsh_gap = pinger.stop() if pinger else float("nan")

        lamina_bytes = result["memory_bytes"] + result["disk_bytes"] + result["layer_bytes"]
        virsh_bytes = bare.get("memory_bytes", 0) + bare.get("disk_bytes", 0)
        rows = [
            ("total time (s)", lamina_seconds, bare["seconds"]),
            ("  of which the migration (s)", result["seconds"] or float("nan"),
             bare["seconds"]),
            ("downtime, libvirt (ms)", float(result["downtime_ms"] or "nan"),
             bare.get("downtime_ms", float("nan"))),
            ("downtime, seen by ping (ms)", lamina_gap, virsh_gap),
            ("bytes into the destination (MiB)", lamina_wire / MIB, bare["wire_bytes"] / MIB),
            ("bytes libvirt counts (MiB)", lamina_bytes / MIB, virsh_bytes / MIB),
            ("  memory (MiB)", result["memory_bytes"] / MIB, bare.get("memory_bytes", 0) / MIB),
            ("  instance layer, zeros too (MiB)", result["disk_bytes"] / MIB,
             bare.get("disk_bytes", 0) / MIB),
            ("  read-only layers fetched (MiB)", result["layer_bytes"] / MIB, 0.0),
        ]  # fmt: skip
        print(f"\nLive migration of an idle 256 MiB layered guest (webserv), TCG: Lamina "
              f"{src.name} -> {dest.name}, virsh back")  # fmt: skip
        print(f"{'':34} {'Lamina':>10} {'virsh':>10}  Lamina/virsh")
        for label, ours, theirs in rows:
            print(f"{label:34} {ours:10.2f} {theirs:10.2f}  {ratio(ours, theirs)}")
        print(
            "bytes into the destination: what its links received during the move (the "
            "migration stream, NBD, any layer fetched); libvirt counts zero blocks as copied"
        )
        checkpoints(client, hosts)
    finally:
        if cloud is not None:
            cloud.stop()
        lab.remove()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
