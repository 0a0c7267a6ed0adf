"""Image transfers and image-metadata throughput of a real Lamina, beside baselines measured in
the same run (VISOR's chapter 5 methodology, scaled to one machine).

Run from the repository root::

    .venv/bin/python benchmarks/images.py [--sizes 250M,1G,2G] [--concurrency 1,4,16]
                                          [--concurrent-size 750M] [--duration 10]
                                          [--images 200] [--skip-transfers] [--skip-api]
                                          [--quick]

Transfers: the same random file uploaded and downloaded with curl through Lamina (file store),
against ``cp`` of the file on the same disk and curl through a minimal static file server on
loopback (a threaded Python server: ``socket.sendfile`` for GET, ``readinto``/``write`` for
PUT); wall time and the manager's peak RSS growth (VmRSS sampled every 20 ms). Metadata:
requests/s at 100 concurrent clients (wrk, signed requests) for the listing of 200 images,
HEAD of one image, registering metadata and updating metadata, beside VISOR's figures.

Everything lives in one temporary directory under /tmp, removed at the end (success, error,
Ctrl-C or SIGTERM). It prints figures; it never fails because a figure is slow. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from boot import Load  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
PIECE = 64 * MiB
DOWNLOAD_RUNS = 3
UPLOAD_RUNS = 3
WRK_SCRIPT = ROOT / "benchmarks" / "wrk_method.lua"
RSS_INTERVAL = 0.02
CURL_TIMEOUT = 900.0

UPLOAD_1G_TARGET_S = 2.5
DOWNLOAD_TARGET = 0.8  # of curl's speed through the static server
RSS_TARGET_MIB = 64.0
#: VISOR's meta system (section 5.3, 100 concurrent clients, its best backend) and ours.
VISOR_RPS = {"list": 252.0, "get-one": 1254.0, "register": 346.0, "update": 900.0}
TARGET_RPS = {"list": 500.0, "get-one": 2500.0, "register": 700.0, "update": 1800.0}
ARCHES = ("i386", "x86_64", "aarch64")
FORMATS = ("iso", "raw", "qcow2", "vmdk", "vdi", "vhd")
TYPES = ("kernel", "ramdisk", "machine", "layer")


# -- the baseline static file server (run as a subprocess of this script) ----------------


def serve_static(root: Path, port: int) -> None:
    """GET /<name> sends the file with sendfile(2); PUT /<name> writes the body to it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _file(self) -> Path:
            return root / Path(self.path.split("?", 1)[0]).name

        def do_GET(self) -> None:  # noqa: N802
            try:
                f = self._file().open("rb")
            except OSError:
                self.send_error(404)
                return
            with f:
                size = os.fstat(f.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.flush()
                self.connection.sendfile(f)

        def do_PUT(self) -> None:  # noqa: N802
            left = int(self.headers.get("Content-Length", "0"))
            buf = memoryview(bytearray(MiB))
            with self._file().open("wb") as out:
                while left:
                    n = self.rfile.readinto(buf[: min(left, MiB)])
                    if not n:
                        break
                    out.write(buf[:n])
                    left -= n
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


# -- measuring -----------------------------------------------------------------------------


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)i?B?", text.strip(), re.I)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 250M, 1G)")
    scale = {"": 1, "K": 1024, "M": MiB, "G": GiB}[match[2].upper()]
    return int(float(match[1]) * scale)


def human(size: int) -> str:
    return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"


def rss(pid: int) -> int:
    """Resident set size in bytes (0 once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match[1]) * 1024 if match else 0


class RssSampler:
    """Samples VmRSS of some processes every 20 ms; ``growth(pid)`` is the peak minus the
    value just before."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.start = {pid: rss(pid) for pid in pids}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss(pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid in self.pids:
            self.peak[pid] = max(self.peak[pid], rss(pid))

    def growth(self, pid: int) -> float:
        """MiB."""
        return (self.peak[pid] - self.start[pid]) / MiB


def make_file(path: Path, size: int) -> str:
    """A file of random bytes, written in 64 MiB pieces; returns its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            piece = os.urandom(min(PIECE, left))
            digest.update(piece)
            out.write(piece)
            left -= len(piece)
    return digest.hexdigest()


def fsync_files(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def settle() -> None:
    """Write back every dirty page, so one measurement does not pay for the last one's."""
    subprocess.run(["sync"], check=True)


def run_all(commands: list[list[str]]) -> tuple[float, list[str]]:
    """Start the commands at once; seconds until the last has finished, and their outputs.
    Any failure raises (a benchmark of a failing transfer means nothing)."""
    procs: list[subprocess.Popen[str]] = []
    t0 = time.monotonic()
    try:
        for argv in commands:
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        outs = []
        for proc in procs:
            out, err = proc.communicate(timeout=CURL_TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(proc.args)} failed ({proc.returncode}): {err}")
            outs.append(out)
        return time.monotonic() - t0, outs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


CURL = ["curl", "-sS", "--noproxy", "*", "-H", "Expect:"]


def check_codes(outs: list[str], expected: str, size: int | None = None) -> None:
    for out in outs:
        code, _, length = out.strip().partition(" ")
        if code != expected or (size is not None and int(float(length)) != size):
            raise RuntimeError(f"transfer answered {out.strip()!r}, expected {expected} {size}")


# -- transfers -----------------------------------------------------------------------------


@dataclass
class Row:
    label: str  # "1 GiB" or "4 x 750 MiB"
    size: int
    clients: int
    upload: float = 0.0
    cp: float = 0.0
    cp_fsync: float = 0.0
    put: float = 0.0
    put_fsync: float = 0.0
    download: float = 0.0
    get: float = 0.0
    up_rss: float = 0.0
    down_rss: float = 0.0
    static_up_rss: float = 0.0
    static_down_rss: float = 0.0


class Bench:
    """One manager (restarted per row, so each row starts from a fresh process) and one
    static server, both on loopback."""

    def __init__(self, work: Path) -> None:
        from boot import PRODUCTION_DEFAULTS
        from harness import Cloud, free_port, wait_until

        self.work = work
        self.cloud = Cloud(work / "cloud", **{**PRODUCTION_DEFAULTS, "LAMINA_LOG_LEVEL": "WARNING"})
        self.static_root = work / "static"
        self.static_root.mkdir()
        self.copies = work / "copies"
        self.copies.mkdir()
        self.static_port = free_port()
        self.static_log = (work / "static.log").open("w")
        self.static = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--static-server",
                str(self.static_root),
                str(self.static_port),
            ],
            stdout=self.static_log,
            stderr=subprocess.STDOUT,
        )
        self.static_url = f"http://127.0.0.1:{self.static_port}"
        import httpx

        wait_until(
            lambda: httpx.get(f"{self.static_url}/none").status_code == 404, 30, "static server"
        )

    @property
    def manager_pid(self) -> int:
        proc = self.cloud.managers[-1].proc
        assert proc is not None
        return proc.pid

    def restart_manager(self) -> None:
        self.cloud.stop()
        self.cloud.start_manager()
        self.keys = self.cloud.keys()
        # Warm up: the first upload and download load code and start thread pools; that is
        # not what a transfer costs.
        src = self.work / "warm"
        sha = make_file(src, MiB)
        ids = self.lamina_upload(src, sha, 1)
        self.lamina_download(ids, MiB)
        self.delete_images(ids)
        src.unlink()

    def signed(
        self, method: str, path: str, upload: bool = False, extra: dict[str, str] | None = None
    ) -> list[str]:
        """curl's ``-H`` arguments of a signed request with the headers ``extra`` (signed
        too when they are X-Image-Meta-* headers)."""
        from lamina.identity.signing import sign_headers

        extra = extra or {}
        headers = sign_headers(
            method,
            path,
            "",
            None if upload else b"",
            *self.keys,
            unsigned_payload=upload,
            headers=extra.items(),
        )
        headers.update(extra)
        return [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]

    def lamina_upload(self, src: Path, sha256: str, clients: int) -> list[str]:
        def headers(i: int) -> list[str]:
            meta = {
                "Content-Type": "application/octet-stream",
                "X-Image-Meta-Sha256": sha256,
                "X-Image-Meta-Format": "raw",
                "X-Image-Meta-Architecture": "x86_64",
                "X-Image-Meta-Name": f"bench-{i}",
            }
            return self.signed("POST", "/images", upload=True, extra=meta)

        outs = [self.work / f"up-{i}.json" for i in range(clients)]
        commands = [
            [
                *CURL,
                "-X",
                "POST",
                "-T",
                str(src),
                *headers(i),
                "-o",
                str(out),
                "-w",
                "%{http_code} %{size_upload}",
                f"{self.cloud.url}/images",
            ]
            for i, out in enumerate(outs)
        ]
        took, answers = run_all(commands)
        self.last = took
        check_codes(answers, "201", src.stat().st_size)
        ids = []
        for out in outs:
            image = json.loads(out.read_text())["image"]
            if image["status"] != "available" or image["sha256"] != sha256:
                raise RuntimeError(f"upload ended {image['status']}: {image}")
            ids.append(image["id"])
            out.unlink()
        return ids

    def lamina_download(self, ids: list[str], size: int) -> float:
        commands = [
            [
                *CURL,
                *self.signed("GET", f"/images/{i}"),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                f"{self.cloud.url}/images/{i}",
            ]
            for i in ids
        ]
        took, answers = run_all(commands)
        check_codes(answers, "200", size)
        return took

    def delete_images(self, ids: list[str]) -> None:
        with self.cloud.http as http:
            for image_id in ids:
                http.delete(f"/images/{image_id}").raise_for_status()

    def _remove(self, ids: list[str], names: list[str]) -> None:
        self.delete_images(ids)
        for n in names:
            (self.static_root / n).unlink()

    def _upload_round(self, r: Row, src: Path, sha256: str) -> tuple[Row, list[str], list[str]]:
        """cp, curl PUT and Lamina uploads of ``src`` by ``r.clients`` clients, timed into
        ``r``; answers it with the images and static files made."""
        clients, size = r.clients, r.size
        manager, static = self.manager_pid, self.static.pid
        # Upload baselines: cp to new files on the same disk; curl PUT to the static server.
        copies = [self.copies / f"copy-{i}" for i in range(clients)]
        r.cp, _ = run_all([["cp", str(src), str(c)] for c in copies])
        t0 = time.monotonic()
        fsync_files(copies)
        r.cp_fsync = r.cp + time.monotonic() - t0
        for c in copies:
            c.unlink()
        settle()

        names = [f"put-{i}" for i in range(clients)]
        with RssSampler(static) as sampled:
            r.put, answers = run_all(
                [
                    [
                        *CURL,
                        "-T",
                        str(src),
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code} %{size_upload}",
                        f"{self.static_url}/{n}",
                    ]
                    for n in names
                ]
            )
        check_codes(answers, "201", size)
        r.static_up_rss = sampled.growth(static)
        t0 = time.monotonic()
        fsync_files([self.static_root / n for n in names])
        r.put_fsync = r.put + time.monotonic() - t0
        settle()

        # Lamina upload: both checksums computed, fsync and rename before the 201.
        with RssSampler(manager) as sampled:
            ids = self.lamina_upload(src, sha256, clients)
        r.upload, r.up_rss = self.last, sampled.growth(manager)
        settle()

        return r, ids, names

    def transfer_row(self, label: str, size: int, clients: int) -> Row:
        row = Row(label, size, clients)
        src = self.work / "source.img"
        sha256 = make_file(src, size)
        self.restart_manager()
        settle()
        static = self.static.pid
        # One transfer at a time is timed UPLOAD_RUNS times (baselines and Lamina in turn);
        # each figure is the median. Concurrent rows run once.
        rounds: list[tuple[Row, list[str], list[str]]] = []
        for _ in range(UPLOAD_RUNS if clients == 1 else 1):
            if rounds:
                self._remove(*rounds[-1][1:])  # the previous round's files
            rounds.append(self._upload_round(Row(label, size, clients), src, sha256))
        _, ids, names = rounds[-1]
        for name in ("cp", "cp_fsync", "put", "put_fsync", "upload"):
            setattr(row, name, statistics.median(getattr(r, name) for r, _, _ in rounds))
        row.up_rss = max(r.up_rss for r, _, _ in rounds)
        row.static_up_rss = max(r.static_up_rss for r, _, _ in rounds)
        manager = self.manager_pid

        # Downloads: both files were just written, so both come from the page cache. They
        # are quick, so each is timed DOWNLOAD_RUNS times, alternating; medians are shown.
        gets, downloads = [], []
        for _ in range(DOWNLOAD_RUNS):
            with RssSampler(static) as sampled:
                took, answers = run_all(
                    [
                        [
                            *CURL,
                            "-o",
                            "/dev/null",
                            "-w",
                            "%{http_code} %{size_download}",
                            f"{self.static_url}/{n}",
                        ]
                        for n in names
                    ]
                )
            check_codes(answers, "200", size)
            gets.append(took)
            row.static_down_rss = max(row.static_down_rss, sampled.growth(static))
            with RssSampler(manager) as sampled:
                downloads.append(self.lamina_download(ids, size))
            row.down_rss = max(row.down_rss, sampled.growth(manager))
        row.get, row.download = statistics.median(gets), statistics.median(downloads)

        self._remove(ids, names)
        src.unlink()
        return row

    def close(self) -> None:
        self.cloud.stop()
        if self.static.poll() is None:
            self.static.terminate()
            self.static.wait(10)
        self.static_log.close()


def ratio(value: float, base: float) -> str:
    return f"{value / base:5.2f}x" if base > 0 else "  n/a"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


TRANSFER_HEADER = (
    f"  {'transfer':13} {'op':8} {'Lamina':>8} | {'cp':>7} {'ratio':>6} {'cp+fsync':>8} "
    f"{'ratio':>6} | {'curl':>7} {'ratio':>6} {'+fsync':>7} {'ratio':>6} | "
    f"{'RSS+ MiB':>8} {'static':>6} | target"
)


def print_row(row: Row) -> None:
    speed = row.get / row.download if row.download else 0.0
    up_target = ""
    if row.clients == 1 and row.size == GiB:
        up_target = f"<= {UPLOAD_1G_TARGET_S:g} s ({verdict(row.upload <= UPLOAD_1G_TARGET_S)})"
    down_target = (
        f"speed {speed:.2f}x curl >= {DOWNLOAD_TARGET:g}x ({verdict(speed >= DOWNLOAD_TARGET)})"
    )
    if row.clients >= 16 or (row.clients == 1 and row.size >= 2 * GiB):
        rss_ok = max(row.up_rss, row.down_rss) < RSS_TARGET_MIB
        rss_target = f"RSS < {RSS_TARGET_MIB:g} MiB ({verdict(rss_ok)})"
        up_target = f"{up_target}; {rss_target}" if up_target else rss_target
    print(
        f"  {row.label:13} {'upload':8} {row.upload:6.2f} s | {row.cp:5.2f} s "
        f"{ratio(row.upload, row.cp):>6} {row.cp_fsync:6.2f} s "
        f"{ratio(row.upload, row.cp_fsync):>6} | "
        f"{row.put:5.2f} s {ratio(row.upload, row.put):>6} {row.put_fsync:5.2f} s "
        f"{ratio(row.upload, row.put_fsync):>6} | {row.up_rss:8.1f} {row.static_up_rss:6.1f} | "
        f"{up_target}"
    )
    print(
        f"  {'':13} {'download':8} {row.download:6.2f} s | {'':31} | "
        f"{row.get:5.2f} s {ratio(row.download, row.get):>6} {'':14} | "
        f"{row.down_rss:8.1f} {row.static_down_rss:6.1f} | {down_target}"
    )


def bench_transfers(
    work: Path, sizes: list[int], concurrency: list[int], concurrent_size: int
) -> None:
    print(
        "\n== Image transfers: curl through Lamina (file store, signed, X-Image-Meta-Sha256 "
        "declared)\n   against cp on the same disk and curl through a static server on loopback;"
        " times are wall\n   times of the whole batch, ratio = Lamina's time / the baseline's "
        "(1.00x = as fast);\n   RSS = the server's peak VmRSS growth during the transfer "
        "(sampled every 20 ms);\n   cp and curl PUT do not fsync: '+fsync' adds fsync(2) "
        "of the copies, as Lamina's store does"
    )
    bench = Bench(work)
    print(f"\n{TRANSFER_HEADER}")
    try:
        rows = [(human(s), s, 1) for s in sizes]
        rows += [(f"{n} x {human(concurrent_size)}", concurrent_size, n) for n in concurrency]
        for label, size, clients in rows:
            print_row(bench.transfer_row(label, size, clients))
            sys.stdout.flush()
    finally:
        bench.close()


# -- metadata throughput -------------------------------------------------------------------


def wrk(url: str, method: str, headers: dict[str, str], connections: int, duration: float) -> Load:
    from boot import _wrk_ms

    argv = [
        "wrk",
        "--latency",
        "-t2",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "-s",
        str(WRK_SCRIPT),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    out = subprocess.run(
        argv,
        check=True,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        env={**os.environ, "WRK_METHOD": method},
    ).stdout
    pct = dict(re.findall(r"^\s*(\d+(?:\.\d+)?)%\s+(\S+)\s*$", out, re.M))
    total = re.search(r"^\s*(\d+) requests in", out, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not (total and rate and "50" in pct and "99" in pct):
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.M)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors[1]))
    return Load(float(rate[1]), _wrk_ms(pct["50"]), _wrk_ms(pct["99"]), int(total[1]), errors)


def bench_api(work: Path, count: int, duration: float, connections: int, processes: int) -> None:
    from boot import PRODUCTION_DEFAULTS
    from harness import Cloud

    from lamina.identity.signing import sign_headers

    if not shutil.which("wrk"):
        print("\n== Image metadata throughput: skipped (wrk is not installed)")
        return
    print(
        f"\n== Image metadata throughput: {connections} concurrent clients (wrk, 2 threads, "
        f"signed requests replayed), {duration:g} s per figure, SQLite, {count} images, "
        f"manager.processes = {processes}"
    )
    cloud = Cloud(
        work / "api",
        **{
            **PRODUCTION_DEFAULTS,
            "LAMINA_LOG_LEVEL": "WARNING",
            "LAMINA_MANAGER__PROCESSES": str(processes),
        },
    )
    try:
        cloud.start_manager()
        keys = cloud.keys()
        t0 = time.monotonic()
        with cloud.http as http:
            ids = []
            for i in range(count):
                meta = {
                    "X-Image-Meta-Name": f"image-{i:04d}",
                    "X-Image-Meta-Architecture": ARCHES[i % len(ARCHES)],
                    "X-Image-Meta-Format": FORMATS[i % len(FORMATS)],
                    "X-Image-Meta-Type": TYPES[i % len(TYPES)],
                    "X-Image-Meta-Access": "public" if i % 3 else "private",
                    "X-Image-Meta-Os": "debian" if i % 2 else "ubuntu",
                }
                r = http.post("/images", headers=meta)
                r.raise_for_status()
                ids.append(r.json()["image"]["id"])
            listed = http.get("/images")
            listed.raise_for_status()
            one = http.head(f"/images/{ids[0]}")
        took = time.monotonic() - t0
        print(
            f"  registered {count} images in {took:.1f} s; GET /images lists "
            f"{len(listed.json()['images'])} ({len(listed.content)} bytes); HEAD answers "
            f"{sum(k.lower().startswith('x-image-meta-') for k in one.headers)} metadata headers"
        )
        empty = {"Content-Length": "0"}
        target = ids[len(ids) // 2]
        renamed = {"X-Image-Meta-Name": "renamed-by-wrk", "X-Image-Meta-Os": "debian"}
        registered = {
            "X-Image-Meta-Name": "registered-by-wrk",
            "X-Image-Meta-Architecture": "x86_64",
            "X-Image-Meta-Format": "qcow2",
            "X-Image-Meta-Type": "machine",
        }

        def signed_with(method: str, path: str, meta: dict[str, str]) -> dict[str, str]:
            signed = sign_headers(method, path, "", b"", *keys, headers=meta.items())
            return {**signed, **empty, **meta}

        cases = [
            ("health", "GET", "/health", {}),
            ("list", "GET", "/images", sign_headers("GET", "/images", "", b"", *keys)),
            (
                "get-one",
                "HEAD",
                f"/images/{target}",
                sign_headers("HEAD", f"/images/{target}", "", b"", *keys),
            ),
            (
                "update",
                "PUT",
                f"/images/{target}",
                signed_with("PUT", f"/images/{target}", renamed),
            ),
            (
                "register",
                "POST",
                "/images",
                signed_with("POST", "/images", registered),
            ),
        ]
        results = {}
        for name, method, path, headers in cases:
            results[name] = wrk(f"{cloud.url}{path}", method, headers, connections, duration)
    finally:
        cloud.stop()

    labels = {
        "health": "GET /health (framework ceiling)",
        "list": f"list: GET /images ({count})",
        "get-one": "get-one: HEAD /images/{id}",
        "register": "register: POST /images (metadata)",
        "update": "update: PUT /images/{id} (metadata)",
    }
    print(
        f"\n  {'operation':38} {'req/s':>8} {'p50':>9} {'p99':>9} {'requests':>9} {'errors':>6}"
        f"   {'VISOR':>6} {'vs VISOR':>8}  target"
    )
    for name in ("health", "list", "get-one", "register", "update"):
        r = results[name]
        visor = VISOR_RPS.get(name)
        extra = ""
        if visor is not None:
            goal = TARGET_RPS[name]
            extra = (
                f"   {visor:6.0f} {ratio(r.requests_per_s, visor):>8}  >= {goal:,.0f} "
                f"({verdict(r.requests_per_s >= goal)})"
            )
        print(
            f"  {labels[name]:38} {r.requests_per_s:8.1f} {r.p50_ms:7.1f}ms {r.p99_ms:7.1f}ms "
            f"{r.requests:9d} {r.errors:6d}{extra}"
        )


# -- main ----------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-images-", dir="/tmp"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="250M,1G,2G", help="single-transfer sizes")
    parser.add_argument("--concurrency", default="1,4,16", help="concurrent transfer counts")
    parser.add_argument("--concurrent-size", default="750M", help="size of concurrent transfers")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per req/s figure")
    parser.add_argument("--images", type=int, default=200, help="images for the listing")
    parser.add_argument("--connections", type=int, default=100, help="concurrent API clients")
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="manager.processes for the metadata part (default: one per CPU)",
    )
    parser.add_argument("--skip-transfers", action="store_true")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a fast check: sizes 16M,64M, 1 and 4 x 32M, 3 s per figure",
    )
    parser.add_argument("--static-server", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.static_server:
        serve_static(Path(args.static_server[0]), int(args.static_server[1]))
        return 0
    if args.quick:
        args.sizes, args.concurrency, args.concurrent_size = "16M,64M", "1,4", "32M"
        args.duration = min(args.duration, 3.0)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    concurrency = _int_list(args.concurrency)
    concurrent_size = parse_size(args.concurrent_size)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    need = max([*sizes, 0]) * 3 + concurrent_size * (2 * max([*concurrency, 0]) + 1)
    with workdir() as work:
        free = shutil.disk_usage(work).free
        print(
            f"Lamina image benchmarks; working directory {work} (removed at the end); "
            f"{os.cpu_count()} CPUs; {free / GiB:.0f} GiB free there"
        )
        if not args.skip_transfers and free < need * 1.1:
            print(f"not enough disk space for the transfers: {need / GiB:.1f} GiB needed")
            return 1
        try:
            if not args.skip_transfers:
                bench_transfers(work, sizes, concurrency, concurrent_size)
            if not args.skip_api:
                bench_api(work, args.images, args.duration, args.connections, args.processes)
        except KeyboardInterrupt:
            print("\ninterrupted; cleaning up", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
