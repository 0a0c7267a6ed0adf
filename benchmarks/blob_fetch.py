"""Hosts fetching a file of the image repository through the manager's blob route, beside
baselines measured in the same run.

Run from the repository root::

    .venv/bin/python benchmarks/blob_fetch.py [--size 1G]

A real manager (file store, plain HTTP on loopback) and one agent (libvirt's test driver).
The same random file is:

- copied with ``cp`` (the disk's own speed) and hashed with ``sha256sum``;
- fetched with ``curl`` from ``GET /blobs/{sha256}`` with a capability (the route alone:
  ``sendfile``, no hashing on the receiving side);
- fetched by the agent's cache code in this process (``ImageCache.install``: streamed,
  hashed as it arrives, fsynced, renamed into place);
- fetched by the real agent, as ``instance.create``'s ``fetch_boot_files`` step asks it to
  (an instance booting the file as its kernel): the step's time from the job's record.

Everything lives in one temporary directory under /tmp, removed at the end. It prints
figures; it never fails because a figure is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clouds import add_host  # noqa: E402
from harness import Cloud  # noqa: E402

from lamina.agent.cache import DownloadTracker, FetchConfig, ImageCache  # noqa: E402
from lamina.compute.fetch import mint  # noqa: E402
from lamina.identity.secretbox import SecretBox  # noqa: E402

MiB = 1024 * 1024
UNITS = {"M": MiB, "G": 1024 * MiB}


def _size(text: str) -> int:
    return int(text[:-1]) * UNITS[text[-1].upper()] if text[-1].upper() in UNITS else int(text)


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def _line(what: str, seconds: float, size: int) -> None:
    print(f"  {what:<52} {seconds:7.2f} s  {size / MiB / seconds:8.0f} MiB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G")
    size = _size(parser.parse_args().size)
    tmp = Path(tempfile.mkdtemp(prefix="lamina-blob-bench-"))
    cloud = Cloud(tmp / "cloud")
    try:
        source = tmp / "blob.img"
        with source.open("wb") as out:
            for _ in range(size // (64 * MiB)):
                out.write(os.urandom(64 * MiB))
            out.write(os.urandom(size % (64 * MiB)))
        cloud.start_manager()
        add_host(cloud, "h1")
        image = cloud.boot_image(source, "blob")
        with cloud.client() as client:
            digest = client.image(image)["sha256"]
            host_id = client.host("h1")["id"]
        box = SecretBox(cloud.root / "manager")
        print(
            f"blob of {size / MiB:.0f} MiB through the manager's /blobs route "
            "(loopback, file store)"
        )
        _line("cp (same disk)", _timed(["cp", str(source), str(tmp / "copy")]), size)
        (tmp / "copy").unlink()
        _line("sha256sum", _timed(["sha256sum", str(source)]), size)
        url = f"{cloud.url}/blobs/{digest}"
        auth = f"Authorization: Bearer {mint(box, host_id, digest)}"
        curl = ["curl", "-sSf", "-H", auth, "-o", str(tmp / "curl.out"), url]
        _line("curl GET /blobs (sendfile, no hashing)", _timed(curl), size)
        (tmp / "curl.out").unlink()
        cache = ImageCache(tmp / "cache", DownloadTracker(), FetchConfig(manager_url=cloud.url))
        started = time.perf_counter()
        cache.install(f"blob:{digest}", digest, mint(box, host_id, digest))
        _line("agent cache code (stream, hash, fsync, rename)", time.perf_counter() - started, size)
        shutil.rmtree(tmp / "cache")
        with cloud.client() as client:
            made = client.create_instance(name="k", kernel=image, memory_mib=64)
            job = client.wait_job(made["job"]["id"], timeout=1800)
            steps = {s["name"]: s for s in client.job(job["id"])["steps"]}
        step = steps["fetch_boot_files"]
        took = (
            datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"])
        ).total_seconds()
        _line("real agent, instance.create's fetch_boot_files step", took, size)
        print(json.dumps({"size": size, "job": job["status"]}))
    finally:
        cloud.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
