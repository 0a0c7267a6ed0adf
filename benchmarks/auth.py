"""What authentication costs: GET /instances (a small listing) signed against the same
request with authentication replaced by a fixed user, in the same run; and the cost of one
signature check in-process, with the key cache and without.

Run from the repository root::

    .venv/bin/python benchmarks/auth.py [--duration 10] [--instances 10]

Target: signing costs less than 10 % of a small request's throughput. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from boot import PRODUCTION_DEFAULTS, Load, run_wrk, signed_get  # noqa: E402
from clouds import add_host  # noqa: E402
from harness import Cloud, free_port, wait_until  # noqa: E402

from lamina.db import Database  # noqa: E402
from lamina.identity import signing  # noqa: E402
from lamina.identity.authn import KeyCache, parse_authorization, verify_signature  # noqa: E402
from lamina.identity.secretbox import SecretBox  # noqa: E402

TARGET_OVERHEAD = 0.10


def in_process_cost(cloud: Cloud, ttl: float, rounds: int = 2000) -> float:
    """Microseconds per signature check (the verify step alone, no HTTP)."""
    data = cloud.root / "manager"
    db = Database(f"sqlite:///{data / 'lamina.db'}", migrate=False)
    cache = KeyCache(db, SecretBox(data), ttl)
    access, secret = cloud.keys()
    headers = {
        k.lower(): v
        for k, v in signing.sign_headers("GET", "/instances", "", b"", access, secret).items()
    }
    t0 = time.perf_counter()
    for _ in range(rounds):
        verify_signature(
            cache,
            claim=parse_authorization(headers["authorization"]),
            method="GET",
            path="/instances",
            query="",
            headers=headers,
            has_body=False,
            visor=False,
        )
    took = time.perf_counter() - t0
    db.dispose()
    return took / rounds * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--instances", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lamina-bench-auth-") as tmp:
        cloud = Cloud(Path(tmp), **{**PRODUCTION_DEFAULTS, "LAMINA_LOG_LEVEL": "WARNING"})
        baseline = None
        try:
            cloud.start_manager()
            add_host(cloud, "bench")
            client = cloud.client()
            kernel = Path(tmp) / "kernel"
            kernel.write_bytes(b"never booted by the test driver")
            for i in range(args.instances):
                made = client.create_instance(name=f"small-{i}", kernel=str(kernel), memory_mib=32)
                client.wait_job(made["job"]["id"])
            port = free_port()
            env = {**cloud.base_env, "PYTHONPATH": str(ROOT / "src")}
            log = (Path(tmp) / "noauth.log").open("w")
            baseline = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "noauth_server.py"), str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            import httpx

            plain = f"http://127.0.0.1:{port}"
            wait_until(
                lambda: httpx.get(f"{plain}/health").status_code == 200, 30, "the baseline manager"
            )
            assert len(httpx.get(f"{plain}/instances").json()["instances"]) == args.instances
            print(
                f"== Authentication cost: GET /instances listing {args.instances} instances, "
                f"wrk, {args.duration:g} s per figure, SQLite"
            )
            rows: list[tuple[str, int, Load]] = []
            for connections in (1, 50):
                unsigned = run_wrk(f"{plain}/instances", connections, args.duration, {})
                signed = run_wrk(
                    f"{cloud.url}/instances",
                    connections,
                    args.duration,
                    signed_get(cloud, "/instances"),
                )
                rows += [
                    ("no auth (baseline)", connections, unsigned),
                    ("signed (LAMINA)", connections, signed),
                ]
            print(
                f"\n  {'connections':>11} {'server':20} {'req/s':>9} {'p50':>9} {'p99':>9} "
                f"{'errors':>6}  cost vs baseline  target"
            )
            for i in range(0, len(rows), 2):
                (_, c, base), (_, _, auth) = rows[i], rows[i + 1]
                cost = 1 - auth.requests_per_s / base.requests_per_s
                verdict = "met" if cost < TARGET_OVERHEAD else "MISSED"
                for name, _, r in rows[i : i + 2]:
                    extra = (
                        f"{cost * 100:+15.1f} %  < {TARGET_OVERHEAD:.0%} ({verdict})"
                        if r is auth
                        else ""
                    )
                    print(
                        f"  {c:>11} {name:20} {r.requests_per_s:9.1f} {r.p50_ms:7.1f}ms "
                        f"{r.p99_ms:7.1f}ms {r.errors:6d}  {extra}"
                    )
            cached = in_process_cost(cloud, ttl=2.0)
            uncached = in_process_cost(cloud, ttl=0.0, rounds=500)
            print(
                f"\n  one signature check in-process: {cached:.0f} us with the key cache, "
                f"{uncached:.0f} us reading the keys from the database each time "
                f"({uncached / cached:.1f}x)"
            )
        finally:
            if baseline is not None:
                baseline.terminate()
                baseline.wait(10)
            cloud.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
