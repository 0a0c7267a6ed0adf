"""Start and stop real Lamina processes (manager, agent) and PostgreSQL for tests."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from lamina.client import Client
from lamina.identity.signing import LaminaAuth

ROOT = Path(__file__).resolve().parent.parent
LAMINA = [sys.executable, "-m", "lamina"]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    until = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < until:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Proc:
    """A Lamina process with its own environment, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.env, self.log = name, args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv(),
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        out.close()
        return self

    def argv(self) -> list[str]:
        return LAMINA + self.args

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Cloud:
    """A manager (and agents) sharing one data directory layout under ``root``.

    ``LAMINA_MANAGER__TLS`` in ``env`` makes it an HTTPS cloud: ``url`` is then ``https://``
    and the harness's own clients trust ``ca_file`` (Lamina's CA for "ca";
    ``LAMINA_MANAGER__TLS_CA_FILE`` or ``LAMINA_CA_FILE`` for "files")."""

    def __init__(self, root: Path, database_url: str | None = None, **env: str) -> None:
        self.root = root
        self.port = free_port()
        tls = env.get("LAMINA_MANAGER__TLS", "off")
        self.scheme = "http" if tls == "off" else "https"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.ca_file: str | None = {
            "ca": str(root / "manager" / "ca" / "ca.pem"),
            "files": env.get("LAMINA_MANAGER__TLS_CA_FILE") or env.get("LAMINA_CA_FILE"),
        }.get(tls)
        self.base_env = {
            **os.environ,
            "LAMINA_DATA_DIR": str(root / "manager"),
            "LAMINA_MANAGER__PORT": str(self.port),
            "LAMINA_COMPUTE__HEARTBEAT_INTERVAL": "0.5",
            "LAMINA_COMPUTE__HOST_DOWN_AFTER": "3",
            "LAMINA_JOBS__POLL_INTERVAL": "0.2",
            "LAMINA_JOBS__LEASE_SECONDS": "3",
            # Tests make orphans on purpose and reconcile at once; those of the grace period
            # itself set it.
            "LAMINA_RECONCILE__GRACE_SECONDS": "0",
            "LAMINA_URL": self.url,
            # Tests serve image locations and channels on loopback and boot administrators'
            # instances from files under the temporary folder: all off by default.
            "LAMINA_IMAGES__HTTP_ALLOW_PRIVATE": "true",
            "LAMINA_CHANNELS__ALLOW_PRIVATE": "true",
            "LAMINA_COMPUTE__BOOT_PATHS": json.dumps([tempfile.gettempdir()]),
            **env,
        }
        for key in ("LAMINA_CONFIG", "LAMINA_ACCESS_KEY", "LAMINA_SECRET_KEY", "LAMINA_PROFILE"):
            self.base_env.pop(key, None)
        self.credentials = root / "credentials"
        self.base_env["LAMINA_CREDENTIALS"] = str(self.credentials)
        if database_url:
            self.base_env["LAMINA_DATABASE__URL"] = database_url
        self.managers: list[Proc] = []
        self.agents: list[Proc] = []

    def start_manager(self, port: int | None = None, **env: str) -> Proc:
        """Start a manager (the first start also makes the administrator whose keys the
        cloud's clients sign with)."""
        if not self.credentials.exists():
            self.cli("user", "bootstrap")
        port = port or self.port
        proc_env = {**self.base_env, "LAMINA_MANAGER__PORT": str(port), **env}
        proc = Proc("manager", ["serve"], proc_env, self.root / f"manager-{port}.log").start()
        self.managers.append(proc)
        health = f"{self.scheme}://127.0.0.1:{port}/health"
        wait_until(
            lambda: httpx.get(health, verify=self.verify()).status_code == 200,
            30,
            f"manager on {port} ({proc.log})",
        )
        return proc

    def start_agent(
        self, name: str, token: str | None, port: int, uri: str = "test:///default", **env: str
    ) -> Proc:
        proc_env = {
            **self.base_env,
            "LAMINA_AGENT__DATA_DIR": str(self.root / f"agent-{name}"),
            "LAMINA_AGENT__PORT": str(port),
            "LAMINA_AGENT__LIBVIRT_URI": uri,
            **env,
        }
        args = ["agent", "--manager", self.url] + (["--token", token] if token else [])
        proc = Proc(f"agent-{name}", args, proc_env, self.root / f"agent-{name}.log").start()
        self.agents.append(proc)
        return proc

    def boot_image(self, path: Path | str, name: str | None = None) -> str:
        """Register the file at ``path`` as a public image (as the administrator) and return
        its id: what members boot from."""
        with self.client() as admin:
            meta = {"name": name or Path(path).name, "access": "public"}
            return str(admin.add_image(meta, file=path)["id"])

    def keys(self) -> tuple[str, str]:
        profile = tomllib.loads(self.credentials.read_text())["default"]
        return profile["access_key"], profile["secret_key"]

    @property
    def auth(self) -> LaminaAuth:
        """Signs as the administrator."""
        return LaminaAuth(*self.keys())

    def verify(self) -> ssl.SSLContext | bool:
        """What the harness's raw HTTP clients check the manager's certificate with."""
        return ssl.create_default_context(cafile=self.ca_file) if self.scheme == "https" else True

    @property
    def http(self) -> httpx.Client:
        """A raw HTTP client of the manager, signing as the administrator."""
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=60, verify=self.verify())

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Client:
        """The Python client, as the administrator unless told otherwise."""
        if access_key is None:
            access_key, secret_key = self.keys()
        return Client(self.url, access_key=access_key, secret_key=secret_key, ca_file=self.ca_file)

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            LAMINA + list(args),
            env=self.base_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"lamina {' '.join(args)} failed: {result.stderr}{result.stdout}")
        return result

    def stop(self) -> None:
        for proc in self.agents + self.managers:
            proc.kill(signal.SIGTERM)


class Postgres:
    """A throwaway PostgreSQL server (MACHINE-NOTES recipe): initdb + pg_ctl as postgres."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.data = root / "data"

    def start(self) -> Postgres:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError("PostgreSQL 15 is not installed: run scripts/install-packages.sh")
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o755)
        # Parents must be traversable by the postgres user.
        for parent in self.root.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "lamina"])
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                opts,
                "-l",
                str(self.root / "log"),
                "-w",
                "start",
            ]
        )
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://lamina@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"postgresql://lamina@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"], check=False
        )

    @staticmethod
    def _run(argv: list[str], check: bool = True) -> None:
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stderr}{result.stdout}")


@contextlib.contextmanager
def slow_mirror(body: bytes, rate: float) -> Iterator[str]:
    """Serve ``body`` over HTTP on 127.0.0.1 at about ``rate`` bytes a second, like a distant
    mirror; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            piece = 64 * 1024
            for start in range(0, len(body), piece):
                self.wfile.write(body[start : start + piece])
                time.sleep(piece / rate)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/image"
    finally:
        server.shutdown()
        server.server_close()


def bare_services(tmp_path: Path, monkeypatch: Any, **settings: Any) -> Any:
    """A manager's ``Services`` on the defaults (no settings file, no ``LAMINA_*`` variable
    of the machine) and ``settings``, its data under ``tmp_path/var``: for tests that drive
    the domain functions in-process."""
    from lamina.config import ENV_PREFIX, load_settings
    from lamina.manager import build_services

    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    empty = tmp_path / "lamina.toml"
    empty.write_text("")
    return build_services(load_settings(empty, data_dir=tmp_path / "var", **settings))


def dig(
    prefix: Sequence[str], server: str, name: str, source: str, *options: str
) -> tuple[str, list[str]]:
    """What ``server`` answers ``source`` for ``name``'s A records, asked with dig run under
    ``prefix`` (e.g. ``["ip", "netns", "exec", NS]``; one try, 2 s): its status (NOERROR,
    NXDOMAIN, REFUSED, ...) and the addresses, or ``("no answer", [])`` when nothing came
    back."""
    done = subprocess.run(
        [*prefix, "dig", "+time=2", "+tries=1", "-b", source, f"@{server}", name, "A",
         *options],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if done.returncode == 9:  # no reply from the server
        return "no answer", []
    assert done.returncode == 0, done
    status = re.search(r"status: (\w+)", done.stdout)
    assert status, done.stdout
    answers = [
        fields[4]
        for fields in (line.split() for line in done.stdout.splitlines())
        if len(fields) == 5 and fields[0] == f"{name}." and fields[3] == "A"
    ]
    return status[1], answers
