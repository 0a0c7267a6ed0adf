"""scripts/lib/daemons.sh, which `make up`, `make down` and the daemon start scripts decide
with: a zombie is never a running daemon, and every wait ends on a wall-clock deadline.

The zombies here are real: this test process starts a child and does not reap it, as the
init of these machines does not reap a daemon that `make down` stopped (issue 12, item 13).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "scripts" / "lib" / "daemons.sh"


def bash(script: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash with the library sourced."""
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {LIB}; {script}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]


def until_zombie(child: subprocess.Popen[bytes]) -> None:
    until = time.monotonic() + 10
    while state(child.pid) != "Z":
        assert time.monotonic() < until, f"pid {child.pid} never exited"
        time.sleep(0.02)


@pytest.fixture
def daemon_binary(tmp_path: Path) -> Path:
    """`sleep` under the name virtlogd: a process whose comm is virtlogd, as the daemon's is."""
    path = tmp_path / "virtlogd"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", path)
    return path


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children the test leaves unreaped as long as it likes; reaped (killed) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        child.kill()
        child.wait()


def spawn(children: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(argv)
    children.append(child)
    return child


def test_a_zombie_is_not_alive(children: list[subprocess.Popen[bytes]], daemon_binary: Path):
    live = spawn(children, str(daemon_binary), "60")
    dead = spawn(children, str(daemon_binary), "0")
    until_zombie(dead)
    # What the old start-libvirtd.sh asked: its pid file's comm, then `pgrep -x`. Both still
    # see the zombie (its /proc entry and name stay until it is reaped).
    assert Path(f"/proc/{dead.pid}/comm").read_text().strip() == "virtlogd"
    assert str(dead.pid) in subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True,
                                           text=True).stdout.split()  # fmt: skip

    assert bash(f"pid_alive {live.pid}").returncode == 0
    assert bash(f"proc_state {dead.pid}").stdout.strip() == "Z"
    assert bash(f"pid_alive {dead.pid}").returncode == 1
    assert bash("pid_alive 4194305").returncode == 1  # above pid_max: no such process
    assert bash("pid_alive ''").returncode == 1
    assert bash("pid_alive 12x").returncode == 1


def test_a_pid_file_naming_a_zombie_is_stale(
    children: list[subprocess.Popen[bytes]], daemon_binary: Path, tmp_path: Path
) -> None:
    live = spawn(children, str(daemon_binary), "60")
    dead = spawn(children, str(daemon_binary), "0")
    until_zombie(dead)
    live_file, dead_file = tmp_path / "live.pid", tmp_path / "dead.pid"
    live_file.write_text(f"{live.pid}\n")
    dead_file.write_text(f"{dead.pid}\n")

    found = bash(f"pidfile_alive {live_file} virtlogd")
    assert (found.returncode, found.stdout.strip()) == (0, str(live.pid))
    assert bash(f"pidfile_alive {dead_file} virtlogd").returncode == 1
    # A live pid reused by another command is not the daemon either.
    assert bash(f"pidfile_alive {live_file} libvirtd").returncode == 1
    assert bash(f"pidfile_alive {tmp_path / 'missing.pid'} virtlogd").returncode == 1


def test_stop_daemon_waits_until_gone_and_removes_its_files(
    children: list[subprocess.Popen[bytes]], daemon_binary: Path, tmp_path: Path
) -> None:
    child = spawn(children, str(daemon_binary), "60")
    pidfile, sock = tmp_path / "virtlogd.pid", tmp_path / "virtlogd-sock"
    pidfile.write_text(f"{child.pid}\n")
    with socket.socket(socket.AF_UNIX) as s:  # a socket file, as a dead daemon leaves it
        s.bind(str(sock))
    started = time.monotonic()
    done = bash(f"stop_daemon virtlogd {pidfile} 10 {sock}")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 6
    # Stopped, and not reaped (this test is its parent): a zombie, which counts as gone.
    assert state(child.pid) == "Z"
    assert not pidfile.exists() and not sock.exists()


def test_stop_escalates_to_sigkill_after_its_deadline(
    children: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    stubborn = spawn(
        children, sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True);"
        " time.sleep(60)",
    )  # fmt: skip
    time.sleep(0.5)  # past its signal() call
    started = time.monotonic()
    done = bash(f"stop_pid stubborn {stubborn.pid} 1")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "still runs 1s after SIGTERM: sending SIGKILL" in done.stderr
    assert 1 <= took < 6  # 1 s to SIGKILL, 2 s for a parent to reap it (this one does not)
    assert state(stubborn.pid) == "Z"


def test_wait_for_has_a_wall_clock_deadline() -> None:
    # Each attempt takes 1.5 s: the old loop (seconds * 4 attempts, 0.25 s apart) waited
    # 8 attempts for "2 seconds", i.e. 14 s.
    started = time.monotonic()
    done = bash(
        "slow() { sleep 1.5; echo 'still booting'; return 1; }; "
        "wait_for 2 'the guest booting' /var/log/x.log slow"
    )
    took = time.monotonic() - started
    assert done.returncode == 1
    assert 2 <= took < 5, took
    assert done.stderr.strip() == (
        "error: the guest booting did not happen within 2s (last: still booting ); "
        "see /var/log/x.log"
    )


def test_one_slow_attempt_cannot_carry_a_wait_past_its_deadline() -> None:
    started = time.monotonic()
    done = bash("hang() { bounded sleep 100; }; wait_for 2 'an answer' here hang")
    assert done.returncode == 1
    assert time.monotonic() - started < 5


def test_wait_for_stops_at_once_when_it_will_not_happen() -> None:
    started = time.monotonic()
    done = bash(
        "gone() { echo 'web is stopped: Failed to connect socket'; return 3; }; "
        "wait_for 180 'the ready line' 'lamina instance console web' gone"
    )
    assert done.returncode == 1
    assert time.monotonic() - started < 3
    assert done.stderr.strip() == (
        "error: the ready line failed: web is stopped: Failed to connect socket; "
        "see lamina instance console web"
    )


def test_wait_for_returns_once_the_command_succeeds(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    done = bash(f"(sleep 1; touch {flag}) & wait_for 10 'the flag' here test -e {flag}; echo ok")
    assert (done.returncode, done.stdout.strip()) == (0, "ok")


def test_socket_answers_only_while_something_listens(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        assert bash(f"socket_answers {path}").returncode == 0
    assert path.exists()  # left behind, as by a daemon that died
    assert bash(f"socket_answers {path}").returncode == 1
    assert bash(f"socket_answers {tmp_path / 'none'}").returncode == 1


def test_the_time_left_belongs_to_its_wait() -> None:
    # A probe sees the seconds its wait has left; a call after the wait is bounded by 20 s,
    # not by whatever the last wait had left when it ended.
    done = bash("probe() { echo \"left=$WAIT_LEFT\" >&2; }; wait_for 5 x y probe; "
                "echo \"after=${WAIT_LEFT-unset}\"")  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "after=unset")


def test_within_ends_a_command_that_overruns_and_says_so() -> None:
    started = time.monotonic()
    done = bash("within 1 'installing webserv' 'lamina job list' sleep 30")
    assert done.returncode == 124
    assert time.monotonic() - started < 4
    assert done.stderr.strip() == (
        "error: installing webserv did not finish within 1s; see lamina job list"
    )
    assert bash("within 5 x y true").returncode == 0
    assert bash("within 5 x y false").returncode == 1


# A parent that reaps its child half a second after it exits, as init does a little later.
SLOW_REAPER = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "60"])
open(sys.argv[1] + ".tmp", "w").write(str(child.pid))
__import__("os").rename(sys.argv[1] + ".tmp", sys.argv[1])
while open(f"/proc/{child.pid}/stat").read().rsplit(") ", 1)[1][0] != "Z":
    time.sleep(0.01)
time.sleep(0.5)
child.wait()
time.sleep(10)
"""


def test_stop_waits_for_the_parent_to_reap(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    reaper = subprocess.Popen([sys.executable, "-c", SLOW_REAPER, str(pidfile)])
    try:
        until = time.monotonic() + 10
        while not pidfile.exists():
            assert time.monotonic() < until
            time.sleep(0.02)
        pid = pidfile.read_text()
        done = bash(f"stop_pid sleeper {pid} 5")
        assert done.returncode == 0, done.stderr
        assert not Path(f"/proc/{pid}").exists()  # reaped, not only a zombie
    finally:
        reaper.kill()
        reaper.wait()
