"""Boot time and API throughput of a real Lamina, each beside a baseline measured in the same run.

Run from the repository root::

    .venv/bin/python benchmarks/boot.py [--runs 3] [--duration 10] [--instances 1000]
                                        [--skip-boot] [--skip-api]

Everything it needs (a manager, an agent, the sample guest, libvirt guests) is started in one
temporary directory and removed at the end, on success, error or Ctrl-C alike. It prints
figures; it never fails because a figure is slow. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Cloud, free_port, wait_until  # noqa: E402

from lamina.agent.drivers.base import GuestSpec  # noqa: E402
from lamina.agent.drivers.domain_xml import domain_xml  # noqa: E402
from lamina.agent.drivers.libvirt_driver import default_domain_type  # noqa: E402
from lamina.client import Client  # noqa: E402
from lamina.errors import LaminaError  # noqa: E402
from lamina.identity.signing import sign_headers  # noqa: E402

QEMU_URI = "qemu:///system"
POLL = 0.05  # seconds between console polls, for Lamina and for the baseline alike
BOOT_TIMEOUT = 120.0
BOOTED_MARKER = "lamina-sample: booted"
BOOT_TARGET_S = 7.0
LISTING_TARGET_RPS = 300.0
# The harness speeds heartbeats and job polling up for tests; a benchmark measures the
# defaults, so these are put back to the settings' defaults (see lamina/config.py).
PRODUCTION_DEFAULTS = {
    "LAMINA_COMPUTE__HEARTBEAT_INTERVAL": "5",
    "LAMINA_COMPUTE__HOST_DOWN_AFTER": "20",
    "LAMINA_JOBS__POLL_INTERVAL": "0.5",
    "LAMINA_JOBS__LEASE_SECONDS": "15",
}


# -- figures ------------------------------------------------------------------------------


@dataclass
class Sample:
    """Seconds measured over several runs."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def cell(self) -> str:
        if not self.values:
            return "n/a"
        return f"{self.median:6.2f} s ({min(self.values):.2f}-{max(self.values):.2f})"


@dataclass(frozen=True)
class Load:
    """One load-generator run."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def ratio(value: float, base: float) -> str:
    return f"{value / base:5.2f}x" if base > 0 and value == value else "  n/a"


# -- a cloud in a temporary directory -----------------------------------------------------


@contextlib.contextmanager
def running_cloud(
    root: Path, name: str, libvirt_uri: str, **env: str
) -> Iterator[tuple[Cloud, Client]]:
    """A manager and one enrolled agent (host ``name``) whose data live under ``root``."""
    cloud = Cloud(root, **{**PRODUCTION_DEFAULTS, **env})
    try:
        cloud.start_manager()
        client = cloud.client()
        agent_port = free_port()
        token = client.add_host(name, f"127.0.0.1:{agent_port}")["token"]
        cloud.start_agent(name, token, agent_port, uri=libvirt_uri)
        wait_until(
            lambda: client.host(name)["status"] == "up",
            60,
            f"host {name} up (logs in {root})",
            interval=0.2,
        )
        yield cloud, client
        client.close()
    finally:
        cloud.stop()


def remove_guests_under(root: Path) -> list[str]:
    """Destroy and undefine every libvirt guest whose definition mentions ``root`` (its
    kernel, console log or disks live there), so only this run's guests are touched."""
    import libvirt

    removed: list[str] = []
    try:
        conn = libvirt.open(QEMU_URI)
    except libvirt.libvirtError:
        return removed
    try:
        for dom in conn.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                if str(root) not in dom.XMLDesc(0):
                    continue
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
                removed.append(dom.name())
    finally:
        conn.close()
    return removed


# -- boot ---------------------------------------------------------------------------------


@dataclass
class BootFigures:
    started: Sample = field(default_factory=Sample)  # job succeeded / `virsh start` returned
    first_line: Sample = field(default_factory=Sample)
    booted_line: Sample = field(default_factory=Sample)


class ConsoleWatch:
    """Reads a growing console log and notes when its first line and the marker appear."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.text = ""
        self.first_line: float | None = None
        self.first_text = ""
        self.booted_line: float | None = None

    def feed(self, data: str) -> None:
        now = time.monotonic() - self.t0
        self.text += data
        if self.first_line is None and "\n" in self.text:
            self.first_line = now
            self.first_text = self.text.split("\n", 1)[0].strip()
        if self.booted_line is None and BOOTED_MARKER in self.text:
            self.booted_line = now

    @property
    def done(self) -> bool:
        return self.booted_line is not None


def build_sample_guest(out: Path) -> tuple[Path, Path]:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-sample-guest.sh"), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    kernel = out / "vmlinux" if (out / "vmlinux").exists() else out / "vmlinuz"
    return kernel, out / "initrd.img"


def boot_with_virsh(
    work: Path, run: int, kernel: Path, initrd: Path, domain_type: str
) -> tuple[float, float, float]:
    """Baseline: the domain XML Lamina would write, defined and started with virsh.
    Returns seconds from `virsh start` to its return, to the first line, to the marker."""
    name = f"bench-baseline-{run}-{int(time.time())}"
    console = work / f"{name}.log"
    xml = work / f"{name}.xml"
    spec = GuestSpec(
        name=name,
        vcpus=1,
        memory_mib=128,
        kernel=str(kernel),
        initrd=str(initrd),
        cmdline="console=ttyS0",
        console_log=str(console),
    )
    xml.write_text(domain_xml(spec, domain_type))
    virsh = ["virsh", "-q", "-c", QEMU_URI]
    subprocess.run([*virsh, "define", str(xml)], check=True, capture_output=True)
    try:
        t0 = time.monotonic()
        subprocess.run([*virsh, "start", name], check=True, capture_output=True)
        started = time.monotonic() - t0
        watch = ConsoleWatch(t0)
        offset = 0
        while not watch.done and time.monotonic() - t0 < BOOT_TIMEOUT:
            with contextlib.suppress(FileNotFoundError), console.open("rb") as f:
                f.seek(offset)
                data = f.read()
                offset += len(data)
                watch.feed(data.decode("utf-8", "replace"))
            time.sleep(POLL)
        if watch.first_line is None or watch.booted_line is None:
            raise RuntimeError(f"baseline guest {name} printed no boot line in {BOOT_TIMEOUT}s")
        return started, watch.first_line, watch.booted_line
    finally:
        subprocess.run([*virsh, "destroy", name], capture_output=True)
        subprocess.run([*virsh, "undefine", name], capture_output=True)


def boot_with_lamina(
    client: Client, run: int, kernel: Path, initrd: Path
) -> tuple[float, float, float, str]:
    """POST /instances, then poll its console (and, in a second thread, its job).
    Returns seconds from the POST to job succeeded, to the first line, to the marker, and
    the first line itself."""
    t0 = time.monotonic()
    created = client.create_instance(
        name=f"bench-boot-{run}",
        vcpus=1,
        memory_mib=128,
        kernel=str(kernel),
        initrd=str(initrd),
        cmdline="console=ttyS0",
    )
    instance_id, job_id = created["instance"]["id"], created["job"]["id"]
    job_done: list[float] = []

    def watch_job() -> None:
        with client.copy() as own:
            job = own.wait_job(job_id, timeout=BOOT_TIMEOUT, interval=POLL)
        if job["status"] != "succeeded":
            raise RuntimeError(f"create job {job_id} {job['status']}: {job.get('error')}")
        job_done.append(time.monotonic() - t0)

    with ThreadPoolExecutor(1) as pool:
        job_future = pool.submit(watch_job)
        watch = ConsoleWatch(t0)
        offset = 0
        while not watch.done and time.monotonic() - t0 < BOOT_TIMEOUT:
            if job_future.done():
                job_future.result()  # raise a failed job now, not after the timeout
            try:
                chunk = client.console(instance_id, offset)
                offset = chunk["offset"]
                watch.feed(chunk["data"])
            except LaminaError:
                pass  # not defined on the host yet
            time.sleep(POLL)
        job_future.result()
    try:
        client.wait_job(client.delete_instance(instance_id)["id"], timeout=60)
    except LaminaError as exc:
        print(f"  (could not delete instance {instance_id}: {exc})", file=sys.stderr)
    if watch.first_line is None or watch.booted_line is None:
        raise RuntimeError(f"instance {instance_id} printed no boot line in {BOOT_TIMEOUT}s")
    return job_done[0], watch.first_line, watch.booted_line, watch.first_text


def bench_boot(work: Path, runs: int) -> None:
    kernel, initrd = build_sample_guest(work / "sample")
    domain_type = default_domain_type(QEMU_URI)
    lamina, baseline = BootFigures(), BootFigures()
    print(
        f"\n== Boot: sample guest ({kernel.name} + initrd, 1 vCPU, 128 MiB, "
        f"domain type {domain_type}), {runs} run(s), console polled every {POLL * 1000:.0f} ms"
    )
    try:
        with running_cloud(work / "cloud", "bench", QEMU_URI) as (_, client):
            for run in range(runs):
                # Interleaved, so drift on the machine hits both sides alike.
                b = boot_with_virsh(work, run, kernel, initrd, domain_type)
                m = boot_with_lamina(client, run, kernel, initrd)
                for figures, values in ((baseline, b), (lamina, m)):
                    figures.started.values.append(values[0])
                    figures.first_line.values.append(values[1])
                    figures.booted_line.values.append(values[2])
                print(
                    f"  run {run + 1}: lamina {m[0]:.2f} / {m[1]:.2f} / {m[2]:.2f} s, "
                    f"virsh {b[0]:.2f} / {b[1]:.2f} / {b[2]:.2f} s "
                    "(started / first line / booted line)"
                )
                if run == 0:
                    print(f"    its first console line: {m[3][:90]!r}")
    finally:
        leftovers = remove_guests_under(work)
        if leftovers:
            print(f"  removed leftover guests: {', '.join(leftovers)}")
    print_boot(lamina, baseline)


def print_boot(lamina: BootFigures, baseline: BootFigures) -> None:
    print(
        f"\n  {'median (min-max)':34} {'Lamina (POST ->)':>24} {'virsh (start ->)':>24} "
        f"{'ratio':>6}  target"
    )
    rows = [
        ("guest started (job succeeded)", lamina.started, baseline.started),
        ("first console line", lamina.first_line, baseline.first_line),
        (f"'{BOOTED_MARKER}' line", lamina.booted_line, baseline.booted_line),
    ]
    for label, mine, base in rows:
        target = ""
        if mine is lamina.first_line:
            verdict = "met" if mine.median <= BOOT_TARGET_S else "MISSED"
            target = f"<= {BOOT_TARGET_S:g} s ({verdict})"
        print(
            f"  {label:34} {mine.cell():>24} {base.cell():>24} "
            f"{ratio(mine.median, base.median):>6}  {target}"
        )
    overhead = lamina.first_line.median - baseline.first_line.median
    print(f"  Lamina's overhead to the first console line: {overhead:+.2f} s (medians)")


# -- API throughput -----------------------------------------------------------------------


def record_instances(client: Client, kernel: Path, count: int) -> float:
    """Create ``count`` instances through the API (8 clients at once) and wait until every
    create job has finished. Returns the seconds it took."""
    t0 = time.monotonic()

    def create(i: int) -> None:
        with client.copy() as own:
            own.create_instance(
                name=f"bench-{i:05d}", vcpus=1, memory_mib=32, kernel=str(kernel), cmdline=""
            )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    wait_until(
        lambda: not client.instances(status="building", limit=1),
        max(120.0, count * 0.5),
        "the create jobs to finish",
        interval=0.5,
    )
    failed = client.instances(status="error", limit=10000)
    if failed:
        raise RuntimeError(f"{len(failed)} instance(s) failed to create")
    return time.monotonic() - t0


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match[1]) * _WRK_UNITS[match[2]]


def signed_get(cloud: Cloud, path: str) -> dict[str, str]:
    """Headers that sign ``GET path``: a load generator replays them, which the server
    accepts within its 5-minute window (the run is shorter)."""
    return sign_headers("GET", path, "", b"", *cloud.keys())


def run_wrk(url: str, connections: int, duration: float, headers: dict[str, str]) -> Load:
    threads = min(connections, 2)
    argv = ["wrk", "--latency", f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    out = subprocess.run(
        argv, check=True, capture_output=True, text=True, timeout=duration + 60
    ).stdout
    pct = dict(re.findall(r"^\s*(\d+(?:\.\d+)?)%\s+(\S+)\s*$", out, re.M))
    total = re.search(r"^\s*(\d+) requests in", out, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not (total and rate and "50" in pct and "99" in pct):
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    requests, rps = int(total[1]), float(rate[1])
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.M)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors[1]))
    return Load(rps, _wrk_ms(pct["50"]), _wrk_ms(pct["99"]), requests, errors)


def run_httpx(url: str, connections: int, duration: float, headers: dict[str, str]) -> Load:
    """Fallback when wrk is not installed: keep-alive asyncio clients (heavier on the CPU
    the server also needs, so its figures are lower bounds)."""

    async def main() -> Load:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as http:
            deadline = time.monotonic() + duration

            async def worker() -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    t = time.monotonic()
                    response = await http.get(url)
                    latencies.append((time.monotonic() - t) * 1000)
                    errors += response.status_code >= 400

            t0 = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.monotonic() - t0
        latencies.sort()
        p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
        return Load(len(latencies) / elapsed, p(0.50), p(0.99), len(latencies), errors)

    return asyncio.run(main())


def bench_api(work: Path, count: int, duration: float, concurrencies: tuple[int, ...]) -> None:
    load: Callable[[str, int, float, dict[str, str]], Load] = (
        run_wrk if shutil.which("wrk") else run_httpx
    )
    tool = "wrk" if load is run_wrk else "httpx (asyncio; wrk not installed)"
    print(
        f"\n== API throughput: GET /instances with {count} instances recorded, SQLite, "
        f"{tool}, {duration:g} s per figure"
    )
    kernel = work / "fake-kernel"
    kernel.write_bytes(b"not booted by libvirt's test driver\n")
    env = {
        "LAMINA_COMPUTE__CPU_ALLOCATION_RATIO": "1000",
        "LAMINA_COMPUTE__MEMORY_ALLOCATION_RATIO": "1000",
        "LAMINA_LOG_LEVEL": "WARNING",  # no access-log line per request
    }
    with running_cloud(work / "api", "bench", "test:///default", **env) as (cloud, client):
        took = record_instances(client, kernel, count)
        body = cloud.http.get("/instances")
        listed = len(body.json()["instances"])
        print(
            f"  recorded {count} instances through the API in {took:.1f} s "
            f"({count / took:.0f}/s); GET /instances returns {listed} ({len(body.content)} bytes)"
        )
        results: dict[tuple[str, int], Load] = {}
        for connections in concurrencies:
            for path in ("/health", "/instances"):
                headers = signed_get(cloud, path) if path != "/health" else {}
                results[path, connections] = load(
                    f"{cloud.url}{path}", connections, duration, headers
                )
    print_api(results, concurrencies)


def print_api(results: dict[tuple[str, int], Load], concurrencies: tuple[int, ...]) -> None:
    print(
        f"\n  {'connections':>11} {'endpoint':12} {'req/s':>9} {'p50':>9} {'p99':>9} "
        f"{'requests':>9} {'errors':>6}   vs /health  target"
    )
    for connections in concurrencies:
        base = results["/health", connections]
        for path in ("/health", "/instances"):
            r = results[path, connections]
            versus, target = "", ""
            if path == "/instances":
                versus = ratio(r.requests_per_s, base.requests_per_s)
                verdict = "met" if r.requests_per_s >= LISTING_TARGET_RPS else "MISSED"
                target = f">= {LISTING_TARGET_RPS:g} req/s ({verdict})"
            print(
                f"  {connections:>11} {path:12} {r.requests_per_s:9.1f} {r.p50_ms:7.1f}ms "
                f"{r.p99_ms:7.1f}ms {r.requests:9d} {r.errors:6d}   {versus:>10}  {target}"
            )


# -- main ---------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="boots of each kind (default 3)")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per load figure (default 10)"
    )
    parser.add_argument(
        "--instances", type=int, default=1000, help="instances recorded for the listing"
    )
    parser.add_argument("--skip-boot", action="store_true", help="skip the boot figures")
    parser.add_argument("--skip-api", action="store_true", help="skip the API figures")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started ignoring it
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-"))
    print(f"Lamina benchmarks; working directory {work} (removed at the end)")
    try:
        if not args.skip_boot:
            bench_boot(work, args.runs)
        if not args.skip_api:
            bench_api(work, args.instances, args.duration, (1, 50))
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        remove_guests_under(work)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
