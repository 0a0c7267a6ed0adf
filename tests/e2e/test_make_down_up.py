"""`make down` then `make up`, twice in a row, and the sample web page answers each time
(issue 12, item 13: the second `make up` found the stopped daemons as zombies, started no
virtlogd, and the web instance's start failed while make up polled for nine minutes).

It runs on a private host: its own mount, network and PID namespaces with their own /run,
libvirt state, libvirtd, virtlogd and tgtd, so `make down` stops those and never the
machine's shared daemons that other tests use (../shared/MACHINE-NOTES.md, "Several hosts on
one machine"). The namespace's init reaps every exited process except libvirtd and virtlogd,
which it leaves as zombies, as the machines of the issue did: a zombie must never count as a
running daemon. (It does reap QEMU: libvirtd waits for a killed QEMU to vanish.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import ROOT, wait_until

pytestmark = pytest.mark.e2e

# The init of the private host (PID 1 there): it sets the host up (argv[1], a bash script),
# says "ready", then reaps exited processes, except those named in LEAVE.
INIT = r"""
import os, signal, subprocess, sys, time
subprocess.run(["bash", "-c", sys.argv[1]], check=True)
print("ready", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
LEAVE = {"libvirtd", "virtlogd"}
while True:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state == "Z" and ppid == "1" and comm not in LEAVE:
            try:
                os.waitpid(int(entry), os.WNOHANG)
            except ChildProcessError:
                pass
    time.sleep(0.2)
"""

# Private /run (pid files, sockets, locks, /run/netns), libvirt state and persistent domain
# XML; the libvirt logs in the test's folder, to read after a failure. The QEMU capabilities
# the machine's libvirtd has probed are copied in: probing again takes minutes when probes
# linger as zombies.
SETUP = """
set -euo pipefail
cache=$(mktemp -d)
cp -a /var/cache/libvirt/. "$cache"/ 2>/dev/null || true
for dir in /run /var/lib/libvirt /var/cache/libvirt /etc/libvirt/qemu; do
    mkdir -p "$dir"
    mount -t tmpfs tmpfs "$dir"
done
mkdir -p /var/log/libvirt
mount --bind {logs} /var/log/libvirt
cp -a "$cache"/. /var/cache/libvirt/
rm -rf "$cache"
mkdir -p /run/lock
ip link set lo up
"""


class PrivateHost:
    """A host of its own on this machine: commands run inside it with ``run``."""

    def __init__(self, folder: Path) -> None:
        logs = folder / "libvirt-logs"
        logs.mkdir(parents=True)
        self.logs = logs
        self._unshare = subprocess.Popen(
            ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc",
             "--propagation", "private",
             "/usr/bin/python3", "-c", INIT, SETUP.format(logs=logs)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._unshare.stdout is not None
        line = self._unshare.stdout.readline()
        assert line.strip() == "ready", f"the private host did not start ({line!r})"
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        self.init = int(children.read_text().split()[0])

    def run(
        self, *argv: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.init), "-m", "-n", "-p", f"--wd={ROOT}", "--", *argv],
            env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def states(self, *names: str) -> list[str]:
        """The state letters of this host's processes called one of ``names``."""
        rows = self.run("ps", "-eo", "stat=,comm=").stdout.split("\n")
        return [r.split()[0][0] for r in rows if r.strip() and r.split()[1] in names]

    def page(self, url: str) -> tuple[int, str]:
        get = "import httpx, sys; r = httpx.get(sys.argv[1], timeout=10)"
        out = self.run(
            str(ROOT / ".venv/bin/python"), "-c", f"{get}; print(r.status_code, r.text)", url
        )
        assert out.returncode == 0, out.stderr
        status, _, text = out.stdout.partition(" ")
        return int(status), text

    def close(self) -> None:
        os.kill(self.init, 9)  # and with it every process of this host
        self._unshare.wait(timeout=30)


@dataclass
class Up:
    """A private host where `make up` has run: its environment and its first output."""

    host: PrivateHost
    env: dict[str, str]
    out: str


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One private host for this module's tests, `make up` run on it once (the slow first
    run: the sample channel built, webserv installed and deployed), `make down` at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root, for namespaces and daemons")
    folder = tmp_path_factory.mktemp("down-up")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env.update(
        LAMINA_DATA_DIR=str(folder / "var"),
        LAMINA_CLI_LINK="",
        LAMINA_CREDENTIALS=str(folder / "credentials"),
    )
    host = PrivateHost(folder)
    try:
        out, _ = make(host, "up", env)
        yield Up(host, env, out)
    finally:
        host.run("make", "--no-print-directory", "down", env=env, timeout=300)
        host.close()


def make(
    host: PrivateHost, target: str, env: dict[str, str], fails: bool = False
) -> tuple[str, float]:
    """Run ``make TARGET`` on the host (it succeeds, or with ``fails`` it fails); its output,
    and how long it took."""
    started = time.monotonic()
    done = host.run("make", "--no-print-directory", target, env=env, timeout=300)
    took = time.monotonic() - started
    out = done.stdout + done.stderr
    print(f"make {target}: {took:.1f}s, exit {done.returncode}\n{out}", file=sys.stderr)
    assert (done.returncode != 0) == fails, (
        f"make {target}: exit {done.returncode} after {took:.0f}s:\n{out}"
    )
    return out, took


def served(host: PrivateHost, out: str) -> None:
    """The URL make up printed answers with the sample page."""
    found = re.search(r"^The web appliance: (\S+)$", out, re.M)
    assert found, out
    status, text = host.page(found.group(1))
    assert status == 200 and "web.lamina.test" in text, text


def test_down_then_up_twice(up: Up) -> None:
    host, env = up.host, up.env
    assert "starting libvirtd" in up.out  # this host's own, which make down then stops
    served(host, up.out)
    for _ in range(2):
        out, took_down = make(host, "down", env)
        assert "libvirtd and virtlogd stopped" in out and "tgtd stopped" in out
        # Gone: nothing of them runs; what is left is zombies nobody reaps.
        assert set(host.states("libvirtd", "virtlogd", "tgtd")) <= {"Z"}
        assert host.states("libvirtd", "virtlogd"), "the init here leaves them as zombies"
        out, took_up = make(host, "up", env)
        assert "starting virtlogd" in out and "starting libvirtd" in out
        assert "failed" not in out
        served(host, out)
        assert took_down < 60 and took_up < 240


# Accepts connections on virtlogd's socket and says nothing: virtlogd "answers", yet every
# guest start fails (libvirtd reads end of file from it).
FAKE_VIRTLOGD = """
import os, socket, sys
path = "/run/libvirt/virtlogd-sock"
if os.path.exists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen()
open(sys.argv[1], "w").write(str(os.getpid()))
while True:
    server.accept()[0].close()
"""


def test_a_failed_start_is_reported_at_once_and_the_next_make_up_repairs_it(
    up: Up, tmp_path: Path
) -> None:
    host, env = up.host, up.env
    lamina = str(ROOT / ".venv/bin/lamina")
    make(host, "up", env)  # whatever the test before left
    assert host.run(lamina, "instance", "stop", "web", "--force", env=env).returncode == 0
    # virtlogd dies (a zombie here) and something else holds its socket.
    assert host.run("bash", "-c", "kill $(cat /run/virtlogd.pid)").returncode == 0
    pidfile = tmp_path / "fake-virtlogd.pid"
    fake = subprocess.Popen(
        ["nsenter", "-t", str(host.init), "-m", "-n", "-p", "--",
         "/usr/bin/python3", "-c", FAKE_VIRTLOGD, str(pidfile)],
    )  # fmt: skip
    try:
        wait_until(pidfile.exists, 10, "the fake virtlogd")
        # The start fails, twice (the retry finds the "daemons" answering): said at once,
        # with the job's error and where to read more; not after minutes of polling.
        out, took = make(host, "up", env, fails=True)
        assert "error: starting the web appliance failed: " in out
        assert "retrying once, after making sure libvirtd, virtlogd and tgtd answer" in out
        assert "see: .venv/bin/lamina job show " in out
        assert took < 150
    finally:
        if pidfile.exists():
            host.run("kill", pidfile.read_text())
        fake.wait(timeout=10)

    # The cause gone (its socket file left behind, stale): make up starts virtlogd, says what
    # failed before, starts web again, and the page answers.
    out, _ = make(host, "up", env)
    assert "start-libvirtd: starting virtlogd" in out
    assert "the web appliance's last start failed: " in out
    served(host, out)
