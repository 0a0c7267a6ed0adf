"""A real S3-compatible server for tests: a single-node OpenStack Swift with its s3api
middleware, plus the ``s3_server`` session fixture (registered in ``conftest.py``).

Swift comes from PyPI into its own virtualenv, ``.venv-swift/`` at the repository root, so its
dependencies (eventlet, an older ``requests`` ...) never meet ours; it is created on first use.
memcached comes from Debian (``scripts/debian-packages.txt``). Everything listens on
127.0.0.1, on free ports, and lives in one temporary directory:

    etc/      swift.conf, {account,container,object}.ring.gz, one .conf per server
    devices/  d1/ the only device of every ring (mount_check is off)
    logs/     one file per process

Start-up order: memcached, the account, container and object servers, then the proxy
(pipeline ``... cache s3api tempauth ... proxy-server``, tempauth user
``test:tester`` / ``testing`` with ``.admin``).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import ROOT, free_port, wait_until

SWIFT_VERSION = "2.38.3"
VENV = ROOT / ".venv-swift"
_STAMP = VENV / ".installed"
SERVERS = ("account", "container", "object")

# Rings with one device and one replica; 2**8 partitions is plenty for one disk.
_RINGS = """
import sys
from swift.common.ring import RingBuilder
etc, device = sys.argv[1], sys.argv[2]
for kind, port in zip(("account", "container", "object"), sys.argv[3:]):
    builder = RingBuilder(8, 1, 1)
    builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
                     "device": device, "weight": 100.0, "meta": ""})
    builder.rebalance()
    builder.save(f"{etc}/{kind}.builder")
    builder.get_ring().save(f"{etc}/{kind}.ring.gz")
"""


def ensure_venv() -> Path:
    """Create ``.venv-swift`` with Swift from PyPI unless it is there (safe to run twice, and
    concurrently: a lock file serialises the installs). Returns its bin directory."""
    bin_dir = VENV / "bin"
    if _STAMP.exists() and _STAMP.read_text().strip() == SWIFT_VERSION:
        return bin_dir
    VENV.mkdir(exist_ok=True)
    with open(VENV / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (_STAMP.exists() and _STAMP.read_text().strip() == SWIFT_VERSION):
            if not (bin_dir / "python").exists():
                python = shutil.which("python3") or sys.executable
                subprocess.run([python, "-m", "venv", str(VENV)], check=True)
            subprocess.run(
                [
                    str(bin_dir / "pip"),
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    f"swift=={SWIFT_VERSION}",
                ],
                check=True,
            )
            _STAMP.write_text(SWIFT_VERSION + "\n")
    return bin_dir


class Swift:
    """One Swift node with s3api, started by :meth:`start` and removed by :meth:`stop`."""

    access_key = "test:tester"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="lamina-swift-")) if root is None else root
        self.ports = {name: free_port() for name in (*SERVERS, "proxy", "memcached")}
        self.endpoint_url = f"http://127.0.0.1:{self.ports['proxy']}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: Seconds from launching the first process until the proxy answered an S3 request.
        self.startup_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> Swift:
        bin_dir = ensure_venv()
        memcached = shutil.which("memcached") or "/usr/bin/memcached"
        if not Path(memcached).exists():
            raise RuntimeError("memcached is missing: run scripts/install-packages.sh as root")
        etc, devices = self.root / "etc", self.root / "devices"
        for folder in (etc, devices / "d1", self.root / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        self._write_configs(etc, devices)
        try:
            subprocess.run(
                [
                    str(bin_dir / "python"),
                    "-I",  # not this folder's swift.py as the ``swift`` package
                    "-c",
                    _RINGS,
                    str(etc),
                    "d1",
                    *(str(self.ports[s]) for s in SERVERS),
                ],
                check=True,
                cwd=self.root,
            )
            began = time.monotonic()
            user = ["-u", "nobody"] if os.geteuid() == 0 else []
            self._spawn(
                "memcached",
                [memcached, "-l", "127.0.0.1", "-p", str(self.ports["memcached"]), "-U", "0"]
                + ["-m", "64", *user],
            )
            for name in SERVERS:
                self._spawn(
                    name, [str(bin_dir / f"swift-{name}-server"), str(etc / f"{name}.conf")]
                )
            self._spawn("proxy", [str(bin_dir / "swift-proxy-server"), str(etc / "proxy.conf")])
            wait_until(self._ready, timeout, f"Swift to answer S3 requests ({self.root / 'logs'})")
            self.startup_seconds = time.monotonic() - began
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (whole process groups) and remove the temporary directory."""
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.procs.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Swift:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for tests -------------------------------------------------------------------------

    def client(self) -> object:
        """A boto3 S3 client for the test user (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
            for log in sorted((self.root / "logs").glob("*.log"))
        )

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = {**os.environ, "EVENTLET_NO_GREENDNS": "yes"}
        env.pop("PYTHONPATH", None)
        with open(self.root / "logs" / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.root,
                start_new_session=True,
            )

    def _ready(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"Swift's {name} exited with {proc.returncode}:\n{self.logs()}")
        # The proxy's healthcheck answers before the storage servers are up; listing the
        # buckets goes through tempauth, memcached and the account server.
        if httpx.get(f"{self.endpoint_url}/healthcheck", timeout=2).status_code != 200:
            return False
        client = self.client()
        try:
            client.list_buckets()  # type: ignore[attr-defined]
        finally:
            client.close()  # type: ignore[attr-defined]
        return True

    def _write_configs(self, etc: Path, devices: Path) -> None:
        user = getpass.getuser()
        common = f"""\
            [DEFAULT]
            bind_ip = 127.0.0.1
            swift_dir = {etc}
            devices = {devices}
            mount_check = false
            workers = 0
            user = {user}
            log_level = INFO
            """
        files = {
            "swift.conf": """\
                [swift-hash]
                swift_hash_path_prefix = lamina
                swift_hash_path_suffix = tests

                [storage-policy:0]
                name = Policy-0
                default = yes
                """,
        }
        for name in SERVERS:
            files[f"{name}.conf"] = (
                textwrap.dedent(common)
                + f"bind_port = {self.ports[name]}\n"
                + textwrap.dedent(f"""
                [pipeline:main]
                pipeline = {name}-server

                [app:{name}-server]
                use = egg:swift#{name}

                [{name}-replicator]
                [{name}-auditor]
                """)
            )
        files["proxy.conf"] = (
            textwrap.dedent(common)
            + f"bind_port = {self.ports['proxy']}\n"
            + textwrap.dedent(f"""
            [pipeline:main]
            pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

            [app:proxy-server]
            use = egg:swift#proxy
            account_autocreate = true

            [filter:catch_errors]
            use = egg:swift#catch_errors

            [filter:gatekeeper]
            use = egg:swift#gatekeeper

            [filter:healthcheck]
            use = egg:swift#healthcheck

            [filter:proxy-logging]
            use = egg:swift#proxy_logging

            [filter:cache]
            use = egg:swift#memcache
            memcache_servers = 127.0.0.1:{self.ports["memcached"]}

            [filter:listing_formats]
            use = egg:swift#listing_formats

            [filter:s3api]
            use = egg:swift#s3api
            location = {self.region}

            [filter:tempauth]
            use = egg:swift#tempauth
            user_test_tester = {self.secret_key} .admin

            [filter:copy]
            use = egg:swift#copy

            [filter:slo]
            use = egg:swift#slo

            [filter:dlo]
            use = egg:swift#dlo
            """)  # noqa: E501
        )
        for name, text in files.items():
            (etc / name).write_text(textwrap.dedent(text))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Swift]:
    """A real S3-compatible server (Swift with s3api) for the whole session, started on
    first use and stopped at the end."""
    server = Swift().start()
    _started.append(server)
    yield server
    server.stop()


_started: list[Swift] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for server in _started:
        terminalreporter.write_line(
            f"Swift with s3api ({server.endpoint_url}) started in {server.startup_seconds:.2f}s"
        )
