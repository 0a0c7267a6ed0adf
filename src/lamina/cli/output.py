"""The CLI's output layer: tables for people, JSON for scripts, a progress bar for jobs."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click


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
