"""The CLI's output layer: tables for people, JSON for scripts, progress bars for jobs and
transfers."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import click

from lamina.errors import LaminaError


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def record(data: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        if key in skip or isinstance(value, (list, dict)):
            continue
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and len(value) > 19 and value[4:5] == "-" and "T" in value:
        try:
            return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            pass
    return str(value)


class ProgressBar:
    """One line redrawn in place while a job runs (only on a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last = ""

    def __call__(self, job: dict[str, Any]) -> None:
        fraction = float(job.get("progress") or 0)
        running = next((s["name"] for s in job.get("steps", []) if s["status"] == "running"), "")
        width = 30
        filled = int(width * fraction)
        rate = job.get("rate")
        speed = f" {rate / 1e6:.1f} MB/s" if rate else ""
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}% "
            f"{job['status']} {running}{speed}"
        )
        if self.tty:
            click.echo("\r" + line.ljust(len(self._last)), nl=False, err=True)
        self._last = line

    def done(self) -> None:
        if self.tty:
            click.echo("", err=True)


def show_job(job: dict[str, Any]) -> None:
    record(job)
    steps = job.get("steps") or []
    if steps:
        click.echo("")
        table(steps, ["seq", "name", "status", "attempts", "started_at", "finished_at", "message"])


def human_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``; binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def byte_line(label: str, done: int, total: int | None, elapsed: float, since: int = 0) -> str:
    """One line of a transfer's progress: bar, share, bytes, rate and time left. ``since``
    is where this run started (a resumed download counts only what it moved itself)."""
    rate = (done - since) / elapsed if elapsed > 0 else 0.0
    speed = f"{human_bytes(rate)}/s" if rate else "-/s"
    if not total:
        return f"{label} {human_bytes(done)} {speed}"
    fraction = min(done / total, 1.0)
    width = 30
    filled = int(width * fraction)
    left = (total - done) / rate if rate else None
    eta = "--:--" if left is None else f"{int(left) // 60:02d}:{int(left) % 60:02d}"
    return (
        f"{label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}% "
        f"{human_bytes(done)}/{human_bytes(total)} {speed} ETA {eta}"
    )


class ByteProgress:
    """A transfer's progress (uploads, downloads) as one line redrawn in place, at most ten
    times a second; only when stderr is a terminal. Pass it as a client ``progress``."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self._start: float | None = None
        self._since = 0
        self._drawn = 0.0
        self._last = ""

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start, self._since = now, done
        if not self.tty or (now - self._drawn < 0.1 and done != total):
            return
        self._drawn = now
        line = byte_line(self.label, done, total, now - self._start, self._since)
        click.echo("\r" + line.ljust(len(self._last)), nl=False, err=True)
        self._last = line

    def done(self) -> None:
        if self.tty and self._last:
            click.echo("", err=True)


def wait_job(obj: Any, job: dict[str, Any], label: str, wait: bool) -> dict[str, Any]:
    """Follow a job with a progress bar (unless ``wait`` is false); raise its error if it did
    not succeed."""
    if not wait:
        return job
    bar = ProgressBar(label)
    job = obj.client.wait_job(job["id"], on_progress=bar)
    bar.done()
    if job["status"] != "succeeded":
        raise LaminaError(f"{job['kind']} {job['status']}: {job['error']} (job {job['id']})")
    return job
