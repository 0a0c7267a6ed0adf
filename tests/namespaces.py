"""Network namespaces a test makes and removes: the agent's, and clients on its bridges.

Tests send traffic only to loopback or to hosts inside namespaces they make themselves
(../shared/MACHINE-NOTES.md, Networks). Every namespace here is ``lamina-t<random>...``;
at the end each process inside is killed (``ip netns pids``) and the namespace deleted
(which deletes the veths in it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result


def in_ns(namespace: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
    return sh("ip", "netns", "exec", namespace, *argv, check=check, timeout=timeout).stdout


class Namespaces:
    def __init__(self) -> None:
        self.prefix = f"lamina-t{uuid.uuid4().hex[:6]}"
        self.made: list[str] = []
        self._veths = 0

    def name(self, suffix: str = "") -> str:
        """The name of a namespace of this test (made by the test or by an agent)."""
        name = self.prefix + (f"-{suffix}" if suffix else "")
        if name not in self.made:
            self.made.append(name)
        return name

    def make(self, suffix: str = "") -> str:
        name = self.name(suffix)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, inside: str, outside: str, inside_name: str = "eth0") -> str:
        """A veth pair: ``inside_name`` in namespace ``inside``, the other end (answered)
        in namespace ``outside``."""
        self._veths += 1
        end = f"lmc{self.prefix[-6:]}{self._veths}"
        sh("ip", "link", "add", end, "type", "veth", "peer", "name", inside_name, "netns", inside)
        sh("ip", "link", "set", end, "netns", outside)
        return end

    def client(
        self,
        suffix: str,
        agent_ns: str,
        bridge: str,
        mac: str,
        address: str | None = None,
        gateway: str | None = None,
    ) -> str:
        """A client namespace whose ``eth0`` (MAC ``mac``) is a port of ``bridge`` in the
        agent's namespace; with ``address`` (``a.b.c.d/len``) configured statically."""
        name = self.make(suffix)
        end = self.veth(name, agent_ns)
        sh("ip", "-n", agent_ns, "link", "set", end, "master", bridge, "up")
        sh("ip", "-n", name, "link", "set", "eth0", "address", mac, "up")
        if address:
            sh("ip", "-n", name, "addr", "add", address, "dev", "eth0")
        if gateway:
            sh("ip", "-n", name, "route", "add", "default", "via", gateway)
        return name

    def cleanup(self) -> None:
        for name in reversed(self.made):
            if not Path(f"/run/netns/{name}").exists():
                continue
            for _ in range(50):
                pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.cleanup()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder other users may reach (dnsmasq reads its files as nobody), removed at the
    end. Not under pytest's tmp_path: pytest makes its base folder 0700 again whenever a
    session starts, which would make the agent choose root for dnsmasq half-way."""
    path = Path(tempfile.mkdtemp(prefix="lamina-t"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
