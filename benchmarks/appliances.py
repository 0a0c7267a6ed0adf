"""Layered and traditional appliances: disk use, instance disk creation and deploy-to-console
time of a real Lamina, each beside a baseline measured in the same run.

Run from the repository root::

    .venv/bin/python benchmarks/appliances.py [--instances 10] [--bases 100M,10G]
                                              [--runs 3] [--skip-disk] [--skip-create]
                                              [--skip-boot]

1. Disk: the bundled sample channel (``scripts/build-sample-channel.sh``) served on loopback;
   N instances each of its two applications (``webserv``, ``dnsserv``, one substrate) deployed
   through the API on a host whose agent runs libvirt's test driver (the disks are the agent's
   real files; the guests are not booted). Bytes allocated on the host for them (the cached
   kernel, initramfs and layers once, each instance's ext4 instance layer and config disk)
   against N full copies per appliance of the same files (``cp``).
2. Instance disk creation for a traditional appliance: the agent's ``DiskStore.create`` (a
   qcow2 overlay on the cached base) for a base of each size, against ``cp`` of the base plus
   ``sync`` of the copy.
3. Deploy to first console line of a layered appliance whose layers are already in the
   host's cache (one deploy first warms it), under QEMU (TCG here): from the deploy request
   to the first console line and to the substrate's ready line, against the same guest
   (same kernel, initramfs, cached layers, a fresh instance layer and config disk) defined
   and started with ``virsh``.

Everything lives in one temporary directory, removed at the end. It prints figures; it never
fails because a figure is slow. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from boot import QEMU_URI, ConsoleWatch, ratio, remove_guests_under, running_cloud  # noqa: E402

from lamina.agent.disks import DiskStore, mkfs_argv, run, write_tar_disk  # noqa: E402
from lamina.agent.drivers.base import DiskSpec, GuestSpec  # noqa: E402
from lamina.agent.drivers.domain_xml import domain_xml  # noqa: E402
from lamina.agent.drivers.libvirt_driver import default_domain_type  # noqa: E402
from lamina.channels.build import build_channel  # noqa: E402
from lamina.channels.signing import generate_key, load_private_key, public_key_text  # noqa: E402
from lamina.client import Client  # noqa: E402
from lamina.wire.protocol import DiskCreate  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
DISK_TARGET = 10.0  # times less disk than full copies, at N = 10
CREATE_TARGET_S = 0.050
BOOT_TARGET_S = 10.0
READY = "lamina-base: ready"
BOOT_TIMEOUT = 180.0
POLL = 0.05
CREATE_RUNS = 5


def allocated(paths: list[Path]) -> int:
    """Bytes the files take on disk (their allocated blocks, not their apparent size)."""
    return sum(p.stat().st_blocks * 512 for p in paths if p.is_file())


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


# -- the sample channel -------------------------------------------------------------------


@contextlib.contextmanager
def served_channel(work: Path) -> Iterator[tuple[str, str]]:
    """The sample channel built and served on loopback: its feed URL and key token."""
    script = ROOT / "scripts" / "build-sample-channel.sh"
    subprocess.run(["bash", str(script), str(work)], check=True, capture_output=True)
    key = generate_key(work / "channel.key")
    build_channel(work / "sources", work / "public", load_private_key(work / "channel.key"))
    handler = functools.partial(Quiet, directory=str(work / "public"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/channel.rss", public_key_text(key)
    finally:
        server.shutdown()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def subscribe(client: Client, url: str, token: str, *names: str) -> None:
    client.add_channel(url, token)
    for name in names:
        job = client.install_appliance(name)["job"]
        done = client.wait_job(job["id"], timeout=600)
        if done["status"] != "succeeded":
            raise RuntimeError(f"installing {name}: {done['error']}")


# -- 1. disk ------------------------------------------------------------------------------


def bench_disk(work: Path, n: int) -> None:
    print(f"\n== Disk: {n} instances each of webserv and dnsserv on one substrate")
    with (
        served_channel(work / "channel") as (url, token),
        running_cloud(work / "cloud", "bench", "test:///default") as (cloud, client),
    ):
        subscribe(client, url, token, "webserv", "dnsserv")
        jobs = []
        for i in range(n):
            for app, variables in (
                ("webserv", {"domain": f"w{i}.example.org"}),
                ("dnsserv", {"domain": f"d{i}.example.org"}),
            ):
                made = client.deploy_appliance(app, f"{app}-{i}", variables, memory_mib=64)
                jobs.append(made["job"]["id"])
        for job_id in jobs:
            if client.wait_job(job_id, timeout=300)["status"] != "succeeded":
                raise RuntimeError(f"deploy job {job_id} failed")
        instances = client.instances(detail=True)
        agent = cloud.root / "agent-bench"
        cache = agent / "cache"
        boot = {i["kernel"] for i in instances} | {i["initrd"] for i in instances}
        digests = {x["sha256"] for i in instances for x in i["layers"]}
        digests |= {_digest(source) for source in boot}
        lamina_shared = allocated([cache / d for d in digests])
        lamina_own = allocated(files_under(agent / "guests"))

        # Baseline: every instance with its own copy of its appliance's files.
        copies = work / "copies"
        copies.mkdir()
        for vm in instances:
            mine = copies / vm["name"]
            mine.mkdir()
            for source in [vm["kernel"], vm["initrd"]] + [x["source"] for x in vm["layers"]]:
                path = Path(source.removeprefix("file://"))
                subprocess.run(["cp", "--sparse=never", str(path), str(mine)], check=True)
        baseline = allocated(files_under(copies))
    lamina = lamina_shared + lamina_own
    print(
        f"  Lamina: {human(lamina)} ({human(lamina_shared)} shared files, "
        f"{human(lamina_own)} instance layers and config disks of {len(instances)} instances)"
    )
    print(f"  full copies: {human(baseline)}")
    times = baseline / lamina if lamina else float("nan")
    verdict = "met" if times >= DISK_TARGET else "MISSED"
    print(f"  {times:.1f}x less disk (target >= {DISK_TARGET:g}x at N = 10: {verdict})")


# -- 2. instance disk creation ------------------------------------------------------------


def make_base(path: Path, size: int) -> None:
    """A raw base image of ``size`` bytes of non-zero data (so ``cp`` cannot skip holes)."""
    block = os.urandom(64 * MiB)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def bench_create(work: Path, sizes: list[int]) -> None:
    print(f"\n== Instance disk creation on a traditional base, median of {CREATE_RUNS}")
    print(f"  {'base':>9} {'Lamina (qcow2 overlay)':>24} {'cp + sync':>12} {'ratio':>8}  target")
    store = DiskStore(work / "guests")
    for size in sizes:
        base = work / f"base-{size}.raw"
        make_base(base, size)
        times = []
        for i in range(CREATE_RUNS):
            t0 = time.perf_counter()
            store.create(DiskCreate(guest=f"g{size}-{i}", name="root"), base)
            times.append(time.perf_counter() - t0)
        lamina = statistics.median(times)
        copy = work / "copy.raw"
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        subprocess.run(["cp", "--sparse=never", str(base), str(copy)], check=True)
        subprocess.run(["sync", str(copy)], check=True)
        baseline = time.perf_counter() - t0
        copy.unlink()
        base.unlink()
        verdict = "met" if lamina <= CREATE_TARGET_S else "MISSED"
        print(
            f"  {human(size):>9} {lamina * 1000:21.1f} ms {baseline:10.2f} s "
            f"{ratio(lamina, baseline):>8}  <= {CREATE_TARGET_S * 1000:g} ms ({verdict})"
        )


# -- 3. deploy to first console line ------------------------------------------------------


def deploy_and_watch(client: Client, name: str) -> tuple[float, float, dict[str, object]]:
    t0 = time.monotonic()
    made = client.deploy_appliance("webserv", name, {"domain": "bench.example.org"})
    vm_id = made["instance"]["id"]
    watch = ConsoleWatch(t0)
    offset = 0
    ready = None
    while time.monotonic() - t0 < BOOT_TIMEOUT:
        with contextlib.suppress(Exception):
            chunk = client.console(vm_id, offset)
            offset = chunk["offset"]
            watch.feed(chunk["data"])
        if READY in watch.text:
            ready = time.monotonic() - t0
            break
        time.sleep(POLL)
    if watch.first_line is None or ready is None:
        raise RuntimeError(f"instance {name} did not print {READY!r} in {BOOT_TIMEOUT}s")
    return watch.first_line, ready, client.instance(vm_id)


def boot_with_virsh(
    work: Path, vm: dict[str, object], cache: Path, domain_type: str
) -> tuple[float, float]:
    """The same layered guest defined and started with virsh: same kernel, initramfs and
    cached layers, a fresh instance layer and config disk."""
    name = f"bench-layered-{int(time.time() * 1000)}"
    own = work / name
    own.mkdir()
    upper, config = own / "upper.img", own / "config.img"
    run(["truncate", "-s", "1G", str(upper)])
    run(mkfs_argv(upper))
    write_tar_disk(
        config,
        {
            "variables": "domain\tbench.example.org\nport\t80\n",
            "templates": "",
            "hostname": f"{name}\n",
        },
    )
    layers = vm["layers"]
    assert isinstance(layers, list)
    disks = [
        DiskSpec(str(cache / x["sha256"]), f"vd{chr(97 + i)}", "raw", True, f"l{i}")
        for i, x in enumerate(layers)
    ]
    disks.append(DiskSpec(str(upper), f"vd{chr(97 + len(disks))}", "raw", False, "upper"))
    disks.append(DiskSpec(str(config), f"vd{chr(97 + len(disks))}", "raw", True, "config"))
    console = own / "console.log"
    spec = GuestSpec(
        name=name, vcpus=1, memory_mib=int(str(vm["memory_mib"])),
        kernel=str(cache / _digest(str(vm["kernel"]))),
        initrd=str(cache / _digest(str(vm["initrd"]))),
        cmdline=str(vm["cmdline"]), disks=tuple(disks), console_log=str(console),
    )  # fmt: skip
    xml = own / "domain.xml"
    xml.write_text(domain_xml(spec, domain_type))
    virsh = ["virsh", "-q", "-c", QEMU_URI]
    subprocess.run([*virsh, "define", str(xml)], check=True, capture_output=True)
    try:
        t0 = time.monotonic()
        subprocess.run([*virsh, "start", name], check=True, capture_output=True)
        watch = ConsoleWatch(t0)
        offset = 0
        while time.monotonic() - t0 < BOOT_TIMEOUT:
            with contextlib.suppress(FileNotFoundError), console.open("rb") as f:
                f.seek(offset)
                data = f.read()
                offset += len(data)
                watch.feed(data.decode("utf-8", "replace"))
            if READY in watch.text:
                assert watch.first_line is not None
                return watch.first_line, time.monotonic() - t0
            time.sleep(POLL)
        raise RuntimeError(f"baseline guest {name} did not print {READY!r}")
    finally:
        subprocess.run([*virsh, "destroy", name], capture_output=True)
        subprocess.run([*virsh, "undefine", name], capture_output=True)


def _digest(source: str) -> str:
    """The SHA-256 of a ``file://`` source: its name in a host's cache."""
    with Path(source.removeprefix("file://")).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def bench_boot(work: Path, runs: int) -> None:
    domain_type = default_domain_type(QEMU_URI)
    print(
        f"\n== Deploy to first console line: webserv (layered), layers cached, domain type "
        f"{domain_type}, {runs} run(s)"
    )
    firsts, readies, base_firsts, base_readies = [], [], [], []
    try:
        with (
            served_channel(work / "channel") as (url, token),
            running_cloud(work / "cloud", "bench", QEMU_URI) as (cloud, client),
        ):
            subscribe(client, url, token, "webserv")
            _, _, vm = deploy_and_watch(client, "warm")  # fills the host's cache
            client.wait_job(client.delete_instance("warm")["id"], timeout=120)
            cache = cloud.root / "agent-bench" / "cache"
            for i in range(runs):
                b_first, b_ready = boot_with_virsh(work, vm, cache, domain_type)
                first, ready, _ = deploy_and_watch(client, f"run{i}")
                client.wait_job(client.delete_instance(f"run{i}")["id"], timeout=120)
                firsts.append(first)
                readies.append(ready)
                base_firsts.append(b_first)
                base_readies.append(b_ready)
                print(
                    f"  run {i + 1}: lamina {first:.2f} / {ready:.2f} s, "
                    f"virsh {b_first:.2f} / {b_ready:.2f} s (first line / ready line)"
                )
    finally:
        leftovers = remove_guests_under(work)
        if leftovers:
            print(f"  removed leftover guests: {', '.join(leftovers)}")
    first, base = statistics.median(firsts), statistics.median(base_firsts)
    verdict = "met" if first <= BOOT_TARGET_S else "MISSED"
    print(
        f"  first console line: Lamina (deploy ->) {first:.2f} s, virsh (start ->) {base:.2f} s,"
        f" {ratio(first, base)}; target <= {BOOT_TARGET_S:g} s ({verdict})"
    )
    ready, base_ready = statistics.median(readies), statistics.median(base_readies)
    print(
        f"  '{READY}': Lamina {ready:.2f} s, virsh {base_ready:.2f} s, {ratio(ready, base_ready)}"
    )


# -- main ---------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": GiB}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--bases", default="100M,10G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-disk", action="store_true")
    parser.add_argument("--skip-create", action="store_true")
    parser.add_argument("--skip-boot", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-appliances-", dir="/var/tmp"))
    try:
        if not args.skip_disk:
            bench_disk(work / "disk", args.instances)
        if not args.skip_create:
            (work / "create").mkdir()
            bench_create(work / "create", [parse_size(s) for s in args.bases.split(",")])
        if not args.skip_boot:
            bench_boot(work / "boot", args.runs)
    finally:
        remove_guests_under(work)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
