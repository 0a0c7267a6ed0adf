"""Block volumes: throughput through the iSCSI export, create-from-snapshot by copy and by
copy-on-write, and attach/detach of a running guest — each beside a baseline measured in the
same run.

Run from the repository root (needs what ``make test`` installs: tgt, QEMU, libvirtd)::

    .venv/bin/python benchmarks/volumes.py [--size 1G] [--backends qcow2,raw] [--runs 5]
                                           [--skip-throughput] [--skip-snapshot]
                                           [--skip-attach]

1. Throughput: a volume of each backend made by the agent's volume server
   (``lamina.agent.volumes.VolumeServer``: the backend's command patterns) and exported with
   tgt; ``qemu-img bench`` writes then reads it sequentially (1 MiB requests, queue depth 4,
   ``cache=none``) through ``iscsi://127.0.0.1/<iqn>/1`` (QEMU's own initiator, as guests use
   it), against the same command on the volume's file directly.

   The comparison is like for like: ``cache=none`` opens the file with O_DIRECT, and the
   export opens the LUN with O_DIRECT too (``--bsoflags direct`` in the backends' ``export``
   pattern), so neither side is served from the host's page cache. With tgt's buffered
   ``rdwr`` (before) a read over iSCSI could come from the page cache and beat the disk, and a
   write only reached the page cache: not a measure of the transport. What remains between
   the two columns is the iSCSI path itself (TCP over loopback, tgtd's copies). Each figure is
   wall time of a whole ``qemu-img bench`` process (login and the final flush included). One
   untimed write pass first allocates the file, so that no timed run of either column pays
   for it, and the two columns take turns going first.

   Beside each figure: the CPU seconds per GiB that qemu-img and tgtd used (the iSCSI path
   needs about ten times the file's), and how many cores other processes kept busy
   meanwhile (a cell is marked ``*`` from half a core). The machine's cores are shared: the
   iSCSI path needs two processes to run in turn, so other load slows it more than the
   file; read the ratios with that figure.
2. Create from snapshot: a volume of ``--size`` filled with data, snapshotted, then a volume
   made from the snapshot by copy-on-write clone and by copy (the volume server's
   ``create``), against ``cp`` of the snapshot file plus ``sync``.
3. Attach and detach of a running guest: the sample guest booted through a real manager and
   agent (libvirt, TCG), a volume attached and detached through the API; the ``volume.attach``
   and ``volume.detach`` jobs' wall time from request to succeeded.

Everything lives in one temporary directory, removed at the end; targets and guests it made
are removed too. It prints figures; it never fails because a figure is slow.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from boot import QEMU_URI, build_sample_guest, remove_guests_under, running_cloud  # noqa: E402

from lamina.agent.cache import DownloadTracker  # noqa: E402
from lamina.agent.volumes import VolumeConfig, VolumeServer  # noqa: E402
from lamina.client import Client  # noqa: E402
from lamina.wire.protocol import SnapshotCreate, VolumeCreate  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
THROUGHPUT_TARGET = 0.8
COW_TARGET_S = 0.100
ATTACH_TARGET_S = 3.0
BENCH_REQUEST = 1 * MiB
BENCH_DEPTH = 4
#: Cores of other load above which a throughput cell is marked disturbed.
BUSY_OTHERS = 0.5


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def ratio(value: float, base: float) -> str:
    return f"{value / base:5.2f}x" if base > 0 else "  n/a"


def start_tgtd() -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "start-tgtd.sh")], check=True)


def volume_server(work: Path, backend: str) -> VolumeServer:
    """The agent's volume server of ``backend``, its files under ``work``."""
    return VolumeServer(VolumeConfig(backend=backend), work / backend, DownloadTracker())


# -- 1. throughput ------------------------------------------------------------------------


HZ = os.sysconf("SC_CLK_TCK")


def tgtd_cpu() -> float:
    """CPU seconds used so far by the tgtd processes of this network namespace (the one that
    serves 127.0.0.1:3260), their ended threads included."""
    total = 0
    ours = os.stat("/proc/self/ns/net").st_ino
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            text = (proc / "stat").read_text()
            if text.partition(" (")[2].startswith("tgtd)") and (
                os.stat(proc / "ns" / "net").st_ino == ours
            ):
                fields = text.rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:  # gone meanwhile
            continue
    return total / HZ


def busy_cpu() -> float:
    """CPU seconds all cores have been busy (neither idle nor waiting for I/O) since boot.

    Interrupt time is in it and charged to no process, so "others" is ~0.1 core when idle."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / HZ


@dataclass(frozen=True)
class Run:
    rate: float  # bytes a second
    cpu: float  # CPU seconds of qemu-img and of tgtd meanwhile


def qemu_img_bench(target: str, fmt: str, size: int, write: bool) -> Run:
    """One sequential pass over ``size`` bytes."""
    argv = ["qemu-img", "bench", "-f", fmt, "-t", "none", "-n", "-s", str(BENCH_REQUEST)]
    argv += ["-S", str(BENCH_REQUEST), "-d", str(BENCH_DEPTH), "-c", str(size // BENCH_REQUEST)]
    if write:
        argv += ["-w", "--pattern=90"]
    before, tgtd = resource.getrusage(resource.RUSAGE_CHILDREN), tgtd_cpu()
    t0 = time.perf_counter()
    subprocess.run([*argv, target], check=True, capture_output=True, timeout=1800)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Run(size / seconds, child + tgtd_cpu() - tgtd)


@dataclass(frozen=True)
class Cell:
    over: float  # bytes a second through the iSCSI export (median)
    direct: float  # bytes a second on the file directly (median)
    cpu_over: float  # CPU seconds per GiB of qemu-img and tgtd (medians)
    cpu_direct: float
    others: float  # cores other processes kept busy meanwhile


def measure(url: str, path: str, fmt: str, size: int, write: bool, runs: int) -> Cell:
    """``runs`` passes over each target, the two taking turns to go first."""
    over: list[Run] = []
    direct: list[Run] = []
    busy, t0 = busy_cpu(), time.monotonic()
    for i in range(runs):
        turns = [(over, url), (direct, path)]
        for results, target in turns if i % 2 == 0 else turns[::-1]:
            results.append(qemu_img_bench(target, fmt, size, write))
    ours = sum(r.cpu for r in over + direct)
    return Cell(
        over=statistics.median(r.rate for r in over),
        direct=statistics.median(r.rate for r in direct),
        cpu_over=statistics.median(r.cpu for r in over) * GiB / size,
        cpu_direct=statistics.median(r.cpu for r in direct) * GiB / size,
        others=(busy_cpu() - busy - ours) / (time.monotonic() - t0),
    )


def bench_throughput(work: Path, size: int, backends: list[str], runs: int) -> None:
    print(
        f"\n== Throughput: {human(size)} sequential, {human(BENCH_REQUEST)} requests, "
        f"depth {BENCH_DEPTH}, cache=none, median of {runs} (MB/s)"
    )
    print(
        "  CPU: seconds per GiB of qemu-img and tgtd, iSCSI / file. others: cores that other\n"
        f"  processes kept busy meanwhile, of {os.cpu_count()} (load average "
        f"{os.getloadavg()[0]:.2f} at the start)"
    )
    print(
        f"  {'backend':8} {'op':6} {'iSCSI export':>13} {'file directly':>14} {'ratio':>7}  "
        f"{'target':19} {'CPU':>9} {'others':>6}"
    )
    disturbed = False
    for backend in backends:
        server = volume_server(work, backend)
        volume = new_id("vol")
        server.create(VolumeCreate(volume=volume, size_bytes=size))
        fmt = server.backend.export_format
        path = server.volume_path(volume)
        export = server.export(volume, "127.0.0.1")
        url = f"iscsi://127.0.0.1/{export.iqn}/{export.lun}"
        try:
            qemu_img_bench(path, fmt, size, write=True)  # allocate: no timed run pays for it
            for write in (True, False):
                cell = measure(url, path, fmt, size, write, runs)
                verdict = "met" if cell.over >= THROUGHPUT_TARGET * cell.direct else "MISSED"
                goal = f">= {THROUGHPUT_TARGET}x ({verdict})"
                mark = "*" if cell.others >= BUSY_OTHERS else ""
                disturbed = disturbed or bool(mark)
                print(
                    f"  {backend:8} {'write' if write else 'read':6} {cell.over / 1e6:13.1f} "
                    f"{cell.direct / 1e6:14.1f} {ratio(cell.over, cell.direct):>7}  {goal:19} "
                    f"{cell.cpu_over:4.2f}/{cell.cpu_direct:4.2f} {cell.others:6.2f}{mark}"
                )
        finally:
            server.unexport(volume)
            server.delete(volume)
    if disturbed:
        print(
            f"  * other processes kept {BUSY_OTHERS} core or more busy: that can slow the iSCSI "
            "column (two\n    processes taking turns) far more than the file's "
            "(docs/benchmarks.md, section 6)"
        )


# -- 2. create from snapshot --------------------------------------------------------------


def bench_snapshot(work: Path, size: int, backends: list[str]) -> None:
    print(f"\n== Create from a snapshot of {human(size)} of data")
    print(f"  {'backend':8} {'clone (CoW)':>12} {'copy':>10} {'cp + sync':>10}  target (CoW)")
    for backend in backends:
        server = volume_server(work, backend)
        source = new_id("vol")
        server.create(VolumeCreate(volume=source, size_bytes=size))
        fmt = server.backend.export_format
        fill = ["qemu-io", "-f", fmt, "-c", f"write -P 0x33 0 {size}"]
        subprocess.run([*fill, server.volume_path(source)], check=True, capture_output=True)
        snap = new_id("snap")
        server.snapshot(source, SnapshotCreate(snapshot=snap))
        made = [source]
        clone_s: float | None = None
        if server.backend.can_clone:
            clone = new_id("vol")
            t0 = time.perf_counter()
            server.create(VolumeCreate(volume=clone, size_bytes=size, snapshot=snap, clone=True))
            clone_s = time.perf_counter() - t0
            made.append(clone)
        copy = new_id("vol")
        t0 = time.perf_counter()
        server.create(VolumeCreate(volume=copy, size_bytes=size, snapshot=snap, clone=False))
        copy_s = time.perf_counter() - t0
        made.append(copy)
        target = work / "cp-target"
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        subprocess.run(["cp", "--sparse=never", server.snapshot_path(snap), str(target)],
                       check=True)  # fmt: skip
        subprocess.run(["sync", str(target)], check=True)
        cp_s = time.perf_counter() - t0
        target.unlink()
        for volume in made:
            server.delete(volume)
        server.delete_snapshot(snap)
        cell = f"{clone_s * 1000:9.1f} ms" if clone_s is not None else "   (cannot)"
        verdict = "n/a" if clone_s is None else "met" if clone_s <= COW_TARGET_S else "MISSED"
        print(
            f"  {backend:8} {cell:>12} {copy_s:8.2f} s {cp_s:8.2f} s  "
            f"<= {COW_TARGET_S * 1000:g} ms ({verdict})"
        )


# -- 3. attach and detach of a running guest ----------------------------------------------


def timed_job(client: Client, answer: dict[str, object]) -> float:
    t0 = time.monotonic()
    job = answer["job"]
    assert isinstance(job, dict)
    done = client.wait_job(job["id"], timeout=300, interval=0.05)
    if done["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {done['status']}: {done.get('error')}")
    return time.monotonic() - t0


def bench_attach(work: Path, runs: int) -> None:
    kernel, initrd = build_sample_guest(work / "sample")
    print(f"\n== Attach and detach of a running guest (sample guest, TCG), {runs} run(s)")
    attach, detach = [], []
    try:
        with running_cloud(work / "cloud", "bench", QEMU_URI) as (_, client):
            made = client.create_instance(name="volume-bench", vcpus=1, memory_mib=128,
                                          kernel=str(kernel), initrd=str(initrd),
                                          cmdline="console=ttyS0")  # fmt: skip
            client.wait_job(made["job"]["id"], timeout=120)
            time.sleep(5)  # let the guest's kernel reach the point where it handles ACPI
            created = client.create_volume(size_bytes=64 * MiB)
            timed_job(client, created)
            volume = created["volume"]["id"]
            for i in range(runs):
                t0 = time.monotonic()
                answer = client.attach_volume(volume, "volume-bench")
                timed_job(client, answer)
                attach.append(time.monotonic() - t0)
                t0 = time.monotonic()
                answer = client.detach_volume(volume)
                timed_job(client, answer)
                detach.append(time.monotonic() - t0)
                print(f"  run {i + 1}: attach {attach[-1]:.2f} s, detach {detach[-1]:.2f} s")
            timed_job(client, client.delete_volume(volume))
            client.wait_job(client.delete_instance("volume-bench")["id"], timeout=120)
    finally:
        remove_guests_under(work)
    for label, values in (("attach", attach), ("detach", detach)):
        median = statistics.median(values)
        verdict = "met" if median <= ATTACH_TARGET_S else "MISSED"
        print(
            f"  {label}: {median:.2f} s median (request to job succeeded); "
            f"target <= {ATTACH_TARGET_S:g} s ({verdict})"
        )


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": GiB}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--backends", default="qcow2,raw")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-snapshot", action="store_true")
    parser.add_argument("--skip-attach", action="store_true")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    backends = args.backends.split(",")
    start_tgtd()
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-volumes-", dir="/var/tmp"))
    try:
        if not args.skip_throughput:
            bench_throughput(work / "throughput", size, backends, args.runs)
        if not args.skip_snapshot:
            bench_snapshot(work / "snapshot", size, backends)
        if not args.skip_attach:
            bench_attach(work / "attach", args.runs)
    finally:
        remove_guests_under(work)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
