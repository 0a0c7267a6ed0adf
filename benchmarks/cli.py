"""How long the command line takes to start: ``lamina --version``, ``lamina --help`` and
``lamina instance list`` beside ``python -c pass`` (the interpreter's own start-up), each the
median of several runs, with the ratio to the baseline.

Run from the repository root::

    .venv/bin/python benchmarks/cli.py [--runs 10] [--own-cloud] [--command 'CMD ...']

``lamina instance list`` needs a manager: the one ``LAMINA_URL`` and your credentials name
(``make up``'s), else ``--own-cloud`` starts a throwaway one (SQLite, no host) under a
temporary folder; with neither it is skipped, saying why. ``--command`` measures another
``lamina`` (``--command '.venv/bin/python -m lamina'``, or another tree's with PYTHONPATH).

Target: ``lamina --version`` in at most 0.2 s. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_VERSION_S = 0.2


def timed(argv: Sequence[str], env: dict[str, str], runs: int) -> float:
    """Median wall-clock seconds of ``argv`` (one unmeasured run first, to warm the page
    cache); raises ``RuntimeError`` with its stderr if it fails."""
    took = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
        if i:
            took.append(time.perf_counter() - t0)
    return statistics.median(took)


def lamina_command(explicit: str | None) -> list[str]:
    if explicit:
        return shlex.split(explicit)
    script = Path(sys.executable).parent / "lamina"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lamina"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per figure (median)")
    parser.add_argument("--own-cloud", action="store_true", help="start a manager to list")
    parser.add_argument("--command", help="the lamina command to measure (default: the venv's)")
    args = parser.parse_args(argv)
    lamina = lamina_command(args.command)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="lamina-bench-cli-") as tmp:
        cloud = None
        if args.own_cloud:
            sys.path.insert(0, str(ROOT / "tests"))
            from harness import Cloud

            cloud = Cloud(Path(tmp), LAMINA_LOG_LEVEL="WARNING")
            cloud.start_manager()
            env = dict(cloud.base_env)
        try:
            print(f"== CLI start-up: {shlex.join(lamina)}, median of {args.runs} runs")
            base = timed([sys.executable, "-c", "pass"], env, args.runs)
            rows: list[tuple[str, float | None, str]] = [("python -c pass", base, "")]
            for words in (["--version"], ["--help"], ["instance", "list"]):
                try:
                    rows.append(
                        (f"lamina {' '.join(words)}", timed(lamina + words, env, args.runs), "")
                    )
                except RuntimeError as exc:
                    why = f"skipped: {exc} (no manager? try --own-cloud)"
                    rows.append((f"lamina {' '.join(words)}", None, why))
        finally:
            if cloud is not None:
                cloud.stop()
    print(f"\n  {'command':24} {'seconds':>8} {'vs python':>10}  target")
    for name, seconds, note in rows:
        if seconds is None:
            print(f"  {name:24} {'-':>8} {'-':>10}  {note}")
            continue
        target = ""
        if name == "lamina --version":
            verdict = "met" if seconds <= TARGET_VERSION_S else "MISSED"
            target = f"<= {TARGET_VERSION_S:g} s ({verdict})"
        print(f"  {name:24} {seconds:8.3f} {seconds / base:9.1f}x  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
