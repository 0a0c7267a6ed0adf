"""Checkpoint and restore of an idle 256 MiB layered guest on a real Lamina, beside bare
libvirt doing the same to the same guest.

Run from the repository root::

    .venv/bin/python benchmarks/checkpoint.py [--runs 3]

The sample channel (``scripts/build-sample-channel.sh``) served on loopback; its ``ticker``
appliance (256 MiB, a counter printed on the console every second) deployed on one host
(``qemu:///system``, TCG here) with the settings' default job polling. Then, ``--runs``
times each:

1. ``lamina instance checkpoint``: from the API request to the ``checkpoint.create`` job's
   end (memory saved and disks copied with the guest paused, then the files stored as images
   of the repository), with how long the guest was paused and the bytes stored;
2. ``lamina instance restore`` on the same host: from the request to the job's end, and to
   the restored guest's next tick on its console (when it visibly runs again);
3. the baseline: ``virsh save`` and ``virsh restore`` of the same guest (memory only, the
   file on local disk, nothing stored or fetched).

Each Lamina figure is broken down by job step. Everything lives in one temporary directory,
removed at the end. It prints figures; it never fails because a figure is slow. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from appliances import served_channel, subscribe  # noqa: E402
from boot import QEMU_URI, remove_guests_under, running_cloud  # noqa: E402

from lamina.client import Client  # noqa: E402

MiB = 1024 * 1024
TARGET_S = 5.0
POLL = 0.05
TICK = re.compile(r"ticker: (\d+)")
BOOT_TIMEOUT = 180.0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"


def wait(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    done = client.wait_job(job["id"], timeout=600, interval=POLL)
    if done["status"] != "succeeded":
        raise RuntimeError(f"{done['kind']}: {done['error']}")
    return done


def step_seconds(job: dict[str, Any]) -> dict[str, float]:
    found = {}
    for step in job.get("steps", []):
        if step.get("started_at") and step.get("finished_at"):
            started = datetime.fromisoformat(str(step["started_at"]))
            finished = datetime.fromisoformat(str(step["finished_at"]))
            found[step["name"]] = (finished - started).total_seconds()
    return found


def ticks(client: Client, name: str, offset: int = 0) -> tuple[list[int], int]:
    chunk = client.console(name, offset)
    return [int(n) for n in TICK.findall(chunk["data"])], int(chunk["offset"])


def wait_ticking(client: Client, name: str, above: int) -> None:
    until = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < until:
        seen, _ = ticks(client, name)
        if seen and max(seen) > above:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} does not count past {above}")


def virsh(*args: str) -> float:
    started = time.monotonic()
    subprocess.run(["virsh", "-c", QEMU_URI, *args], check=True, capture_output=True)
    return time.monotonic() - started


@dataclass
class Figures:
    """Seconds of each run: checkpoints taken (and the guest paused), restores (to the job's
    end and to the guest's next tick), and each job step."""

    taken: list[float] = field(default_factory=list)
    paused: list[float] = field(default_factory=list)
    restored: list[float] = field(default_factory=list)
    ticking: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    size: int = 0


def measure(client: Client, name: str, runs: int, host: str | None = None) -> Figures:
    """Checkpoint the running ticker instance ``name`` and restore it (on ``host`` if
    given), ``runs`` times: for ``benchmarks/migration.py`` too."""
    figures = Figures()
    for run in range(runs):
        checkpoint = f"b{run}-{int(time.time())}"
        started = time.monotonic()
        job = wait(client, client.create_checkpoint(name, checkpoint)["job"])
        figures.taken.append(time.monotonic() - started)
        made = client.checkpoint(name, checkpoint)
        figures.paused.append(float(made["paused_seconds"]))
        figures.size = int(made["size"])
        for step, seconds in step_seconds(job).items():
            figures.steps.setdefault(f"checkpoint.{step}", []).append(seconds)
        time.sleep(1)

        _, offset = ticks(client, name)
        moving = host is not None and client.instance(name).get("host") != host
        started = time.monotonic()
        job = wait(client, {"id": client.restore_checkpoint(name, checkpoint, host)["id"]})
        figures.restored.append(time.monotonic() - started)
        for step, seconds in step_seconds(job).items():
            figures.steps.setdefault(f"restore.{step}", []).append(seconds)
        while not ticks(client, name, 0 if moving else offset)[0]:
            time.sleep(POLL)
        figures.ticking.append(time.monotonic() - started)
        client.delete_checkpoint(name, checkpoint)
        time.sleep(1)
    return figures


def report(figures: Figures, saved: list[float], back: list[float]) -> None:
    print(f"{'':34}{'median (min-max)':>26}  target")
    print(f"{'lamina instance checkpoint':34}{cell(figures.taken):>26}  <= {TARGET_S:.0f} s")
    print(f"{'  guest paused':34}{cell(figures.paused):>26}")
    print(f"{'lamina instance restore':34}{cell(figures.restored):>26}  <= {TARGET_S:.0f} s")
    print(f"{'  ... to its next tick':34}{cell(figures.ticking):>26}")
    print(f"{'virsh save (baseline)':34}{cell(saved):>26}")
    print(f"{'virsh restore (baseline)':34}{cell(back):>26}")
    print(f"checkpoint size: {figures.size / MiB:.1f} MiB (memory, instance layer, config disk)")
    print("by job step:")
    for step, values in figures.steps.items():
        print(f"  {step:32}{cell(values):>26}")
    for label, values in (("checkpoint", figures.taken), ("restore", figures.restored)):
        verdict = "meets" if median(values) <= TARGET_S else "MISSES"
        print(f"{label}: {verdict} the {TARGET_S:.0f} s target")


def bench(work: Path, runs: int) -> None:
    with served_channel(work / "channel") as (url, token):
        with running_cloud(work / "cloud", "h1", QEMU_URI) as (_cloud, client):
            subscribe(client, url, token, "ticker")
            deployed = client.deploy_appliance("ticker", "tick", {}, networks=[])
            wait(client, deployed["job"])
            instance = deployed["instance"]
            guest = f"lamina-{instance['id']}"
            print(f"guest: {instance['memory_mib']} MiB, {instance['vcpus']} vCPU, layered "
                  f"({len(instance['layers'])} read-only layers), TCG")  # fmt: skip
            wait_ticking(client, "tick", 3)
            time.sleep(2)  # idle: booted and settled
            figures = measure(client, "tick", runs)
            saved: list[float] = []
            back: list[float] = []
            for run in range(runs):
                file = work / f"virsh-{run}.save"
                saved.append(virsh("save", guest, str(file)))
                back.append(virsh("restore", str(file)))
                file.unlink()
                time.sleep(1)
    print()
    report(figures, saved, back)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-checkpoint-", dir="/var/tmp"))
    try:
        bench(work, args.runs)
    finally:
        remove_guests_under(work)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
