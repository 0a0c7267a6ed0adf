"""Port forwards: what publishing a guest's port on the host costs, beside the same transfer
made directly inside the network namespace, in the same run.

Run from the repository root (as root; needs iproute2 and curl, which ``make test`` installs)::

    .venv/bin/python benchmarks/networks.py [--size 1G] [--runs 3] [--requests 2000]

A namespace like an agent's (``ns``) and a "guest" namespace on a veth pair from it (an
address on each end, as a guest on a Lamina bridge), with an HTTP server in the guest
(Python's ``http.server``, serving one file of ``--size`` random bytes, and a small one).
The agent's port-forward code (``lamina.agent.forwards.ForwardTable``: listen on 127.0.0.1
of the host, connect from inside ``ns``, copy both ways) publishes the guest's port. Then:

1. throughput: ``curl`` downloading the big file through the forward (127.0.0.1:port), against
   ``curl`` run inside ``ns`` downloading it from the guest's address directly;
2. small requests: ``--requests`` sequential GETs of the small file (a new connection each)
   through the forward, against the same inside ``ns`` directly: requests a second.

Both sides go through the same guest server, so the ratio is the forward's own cost (one
more TCP connection and a copy in user space). Everything is removed at the end. It prints
figures; it never fails because a figure is slow. See docs/benchmarks.md, section 7.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lamina.agent.forwards import ForwardTable  # noqa: E402
from lamina.wire.protocol import NetworkSpec, PortForward  # noqa: E402

NETWORK = "net-0000beeff00d0001"
CIDR, NS_IP, GUEST_IP = "10.250.0.0/30", "10.250.0.1", "10.250.0.2"
GUEST_PORT = 8080


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


@contextlib.contextmanager
def topology(work: Path, size: int) -> Iterator[tuple[str, str]]:
    """The agent-like namespace and the guest namespace serving ``big`` and ``small``."""
    tag = uuid.uuid4().hex[:6]
    ns, guest = f"lamina-bn{tag}", f"lamina-bg{tag}"
    server = None
    try:
        for name in (ns, guest):
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "add", "lmbench0", "type", "veth", "peer", "name", "eth0",
           "netns", guest)  # fmt: skip
        sh("ip", "-n", ns, "addr", "add", f"{NS_IP}/30", "dev", "lmbench0")
        sh("ip", "-n", ns, "link", "set", "lmbench0", "up")
        sh("ip", "-n", guest, "addr", "add", f"{GUEST_IP}/30", "dev", "eth0")
        sh("ip", "-n", guest, "link", "set", "eth0", "up")
        files = work / "www"
        files.mkdir()
        with (files / "big").open("wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 1 << 20))
                f.write(chunk)
                left -= len(chunk)
        (files / "small").write_bytes(b"x" * 512)
        server = subprocess.Popen(
            ["ip", "netns", "exec", guest, sys.executable, "-m", "http.server", "--bind",
             GUEST_IP, "--directory", str(files), str(GUEST_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(100):
            probe = subprocess.run(
                ["ip", "netns", "exec", ns, "curl", "-sf", "-o", "/dev/null",
                 f"http://{GUEST_IP}:{GUEST_PORT}/small"],
            )  # fmt: skip
            if probe.returncode == 0:
                break
            time.sleep(0.1)
        yield ns, guest
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for name in (ns, guest):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def curl_seconds(prefix: list[str], url: str) -> float:
    start = time.perf_counter()
    subprocess.run([*prefix, "curl", "-sf", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - start


def requests_per_second(prefix: list[str], url: str, count: int) -> float:
    """``count`` GETs one after another by one curl; the server closes each connection
    (http.server speaks HTTP/1.0), so each is a new connection through the forward."""
    argv = [*prefix, "curl", "-sf", "-H", "Connection: close"]
    for _ in range(count):
        argv += ["-o", "/dev/null", url]
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-net-", dir="/var/tmp"))
    try:
        with topology(work, size) as (ns, _guest):
            spec = NetworkSpec(network=NETWORK, name="bench", cidr=CIDR, address=NS_IP,
                               domain="bench.lamina.internal")  # fmt: skip
            table = ForwardTable(work / "forwards.json", ns, lambda: {NETWORK: spec})
            info = table.put("fwd-0000beef", PortForward(
                network=NETWORK, guest_ip=GUEST_IP, guest_port=GUEST_PORT))  # fmt: skip
            inside = ["ip", "netns", "exec", ns]
            via = f"http://127.0.0.1:{info.host_port}"
            direct = f"http://{GUEST_IP}:{GUEST_PORT}"
            print(f"== port forward 127.0.0.1:{info.host_port} -> {GUEST_IP}:{GUEST_PORT}"
                  f" (the guest's http.server), {args.runs} runs, medians")  # fmt: skip
            fwd, base = [], []
            for _ in range(args.runs):
                fwd.append(curl_seconds([], via + "/big"))
                base.append(curl_seconds(inside, direct + "/big"))
            mb = size / 1e6
            f_rate, b_rate = mb / statistics.median(fwd), mb / statistics.median(base)
            print(f"  download {args.size}:  forward {f_rate:8.0f} MB/s   direct in the namespace"
                  f" {b_rate:8.0f} MB/s   ratio {f_rate / b_rate:.2f}x")  # fmt: skip
            f_rps = statistics.median(
                requests_per_second([], via + "/small", args.requests) for _ in range(args.runs)
            )
            b_rps = statistics.median(
                requests_per_second(inside, direct + "/small", args.requests)
                for _ in range(args.runs)
            )
            print(f"  {args.requests} GETs, a connection each:  forward {f_rps:7.0f} req/s   "
                  f"direct {b_rps:7.0f} req/s   ratio {f_rps / b_rps:.2f}x")  # fmt: skip
            table.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
