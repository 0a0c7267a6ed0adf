"""Several hosts on one machine: each a network namespace with a private mount namespace, its
own libvirtd and virtlogd, joined by a bridge that stands for the data-centre network.

``make up HOSTS=N`` and the multi-host tests build their hosts with this (the recipe checked in
MACHINE-NOTES, "Several hosts on one machine"). A :class:`Lab` is the bridge (with the lab's
gateway address in the root namespace, where the manager listens) and its hosts; each
:class:`NamespaceHost` has

* a network namespace ``<prefix>-<name>`` with one veth on the bridge and its own address;
* a *keeper*: a ``sleep`` holding a private mount namespace in which tmpfs folders hide the
  machine's libvirt state (``/run/libvirt``, ``/var/lib/libvirt``, ``/var/cache/libvirt``,
  ``/var/log/libvirt``, ``/etc/libvirt/qemu``) and the host's own ``qemu.conf`` is bound over
  ``/etc/libvirt/qemu.conf``, so every host has its own guests, sockets and logs;
* its libvirtd (listening on its address) and virtlogd, started inside both namespaces.

Processes run inside a host with :meth:`NamespaceHost.popen` (``nsenter`` into the keeper's
namespaces); there ``qemu:///system`` is that host's own libvirtd. Everything about a lab is
recorded in ``<root>/lab.json``, so another process (``make down``) finds and removes it:
every process in each namespace is stopped, then the namespaces and the bridge are deleted.

Paths outside the private folders are shared by every host (as shared storage would be): a
host's agent keeps its files in a folder of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

#: Folders each host has to itself (tmpfs in its mount namespace).
PRIVATE = (
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
    "/etc/libvirt/qemu",
)
#: Folders libvirtd expects under them.
SUBDIRS = (
    "/run/libvirt/qemu",
    "/var/lib/libvirt/qemu",
    "/var/cache/libvirt/qemu",
    "/var/log/libvirt/qemu",
    "/etc/libvirt/qemu/networks",
)
QEMU_CONF = "/etc/libvirt/qemu.conf"
#: The capabilities libvirtd probes QEMU for on its first start (~8 s under TCG): copied from
#: the machine's own cache when it has one, still valid (libvirt checks it against QEMU).
CAPABILITIES = Path("/var/cache/libvirt/qemu/capabilities")
#: Jumbo frames on the data-centre network, so VXLAN (50 bytes) fits under guests' 1500.
MTU = 9000
COMMAND_TIMEOUT = 30.0
LIBVIRTD_WAIT = 60.0


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result


@dataclass
class NamespaceHost:
    """One host of a lab (see the module's doc)."""

    name: str
    netns: str
    address: str
    #: Its folder on the shared filesystem: configuration, pid files, logs.
    root: str
    #: The keeper's pid: its mount namespace is the host's.
    keeper: int = 0

    @property
    def folder(self) -> Path:
        return Path(self.root)

    @property
    def migration_uri(self) -> str:
        """Its libvirtd as a peer reaches it (plain TCP, inside the lab only)."""
        return f"qemu+tcp://{self.address}/system"

    def enter(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's network and mount namespaces."""
        return [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            f"--mount=/proc/{self.keeper}/ns/mnt",
            "--",
            *argv,
        ]

    def run(self, *argv: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> str:
        result = subprocess.run(
            self.enter(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} on {self.name} failed ({result.returncode}): {result.stderr}"
            )
        return result.stdout

    def popen(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this host, in the background, its output appended to
        ``log`` (or discarded)."""
        out = log.open("ab") if log else subprocess.DEVNULL
        try:
            return subprocess.Popen(
                self.enter(argv),
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]

    def virsh(self, *args: str, check: bool = True) -> str:
        return self.run("virsh", "-c", "qemu:///system", *args, check=check)

    def libvirtd_answers(self) -> bool:
        if not self.keeper_alive():
            return False
        argv = self.enter(["virsh", "-c", "qemu:///system", "version"])
        try:
            return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def keeper_alive(self) -> bool:
        try:
            os.kill(self.keeper, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return self.keeper > 0

    def daemons(self) -> set[int]:
        """The pids of its keeper, libvirtd and virtlogd."""
        pids = {self.keeper}
        for daemon in ("libvirtd", "virtlogd"):
            with contextlib.suppress(OSError, ValueError):
                pids.add(int((self.folder / f"{daemon}.pid").read_text()))
        return pids

    def reset(self) -> None:
        """Back to a fresh host, its daemons kept: every guest destroyed and undefined,
        every other process stopped (agents, dnsmasq), every interface but ``lo`` and
        ``eth0`` deleted, the nftables ruleset flushed."""
        for name in self.virsh("list", "--all", "--name", check=False).split():
            self.virsh("destroy", name, check=False)
            self.virsh("undefine", name, "--nvram", check=False)
        stop_all(self, keep=self.daemons())
        links = json.loads(sh("ip", "-n", self.netns, "-j", "link", "show").stdout or "[]")
        for link in links:
            if link["ifname"] not in ("lo", "eth0"):
                sh("ip", "-n", self.netns, "link", "del", link["ifname"], check=False)
        sh("ip", "netns", "exec", self.netns, "nft", "flush", "ruleset", check=False)

    def pids(self) -> list[int]:
        """Every process in its network namespace (its keeper, daemons, guests, agent)."""
        result = sh("ip", "netns", "pids", self.netns, check=False)
        return [int(p) for p in result.stdout.split()]


class Lab:
    """A bridge standing for the data-centre network and the hosts on it."""

    def __init__(self, prefix: str, root: Path, subnet: str = "10.99.0.0/24") -> None:
        self.prefix = prefix
        self.root = root.resolve()
        self.network = ipaddress.ip_network(subnet)
        self.bridge = f"{prefix}-dc"[:15]
        self.hosts: dict[str, NamespaceHost] = {}
        self._load()

    @property
    def gateway(self) -> str:
        """The lab's address in the root namespace (on the bridge): where hosts reach the
        manager."""
        return str(self.network.network_address + 1)

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    def _load(self) -> None:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        self.network = ipaddress.ip_network(data["subnet"])
        self.hosts = {h["name"]: NamespaceHost(**h) for h in data["hosts"]}

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {
            "prefix": self.prefix,
            "subnet": str(self.network),
            "bridge": self.bridge,
            "hosts": [asdict(h) for h in self.hosts.values()],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    # -- the bridge -------------------------------------------------------------------------

    def _ensure_bridge(self) -> None:
        if sh("ip", "link", "show", self.bridge, check=False).returncode != 0:
            sh("ip", "link", "add", self.bridge, "mtu", str(MTU), "type", "bridge")
        gateway = f"{self.gateway}/{self.network.prefixlen}"
        if gateway.split("/")[0] not in sh("ip", "-br", "addr", "show", self.bridge).stdout:
            sh("ip", "addr", "add", gateway, "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    # -- hosts -----------------------------------------------------------------------------

    def add_host(self, name: str) -> NamespaceHost:
        """Make host ``name`` (see :meth:`add_hosts`) and return it."""
        return self.add_hosts([name])[0]

    def add_hosts(self, names: Sequence[str]) -> list[NamespaceHost]:
        """Make each host (its address the next free one from .11), or bring back an
        existing one whose keeper or daemons died; return them, each libvirtd answering.
        The daemons start side by side (each takes several seconds to answer)."""
        self._ensure_bridge()
        hosts = []
        for name in names:
            host = self.hosts.get(name)
            if host is None:
                index = len(self.hosts) + 11
                host = NamespaceHost(
                    name=name,
                    netns=f"{self.prefix}-{name}",
                    address=str(self.network.network_address + index),
                    root=str(self.root / name),
                )
                self.hosts[name] = host
            host.folder.mkdir(parents=True, exist_ok=True)
            self._ensure_netns(host)
            if not host.keeper_alive():
                host.keeper = self._start_keeper(host)
            self._save()
            hosts.append(host)
        starting = [h for h in hosts if not h.libvirtd_answers()]
        for host in starting:
            self._start_libvirtd(host)
        deadline = time.monotonic() + LIBVIRTD_WAIT
        for host in starting:
            while not host.libvirtd_answers():
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"host {host.name}'s libvirtd did not answer within {LIBVIRTD_WAIT:g} s "
                        f"(its files: {host.folder})"
                    )
                time.sleep(0.2)
        return hosts

    def _ensure_netns(self, host: NamespaceHost) -> None:
        if sh("ip", "netns", "pids", host.netns, check=False).returncode == 0:
            return
        sh("ip", "netns", "add", host.netns)
        outside = host.netns[:15]
        sh("ip", "link", "del", outside, check=False)  # left by a host removed a moment ago
        sh("ip", "link", "add", outside, "mtu", str(MTU), "type", "veth",
           "peer", "name", "eth0", "mtu", str(MTU), "netns", host.netns)  # fmt: skip
        sh("ip", "link", "set", outside, "master", self.bridge, "up")
        sh("ip", "-n", host.netns, "addr", "add",
           f"{host.address}/{self.network.prefixlen}", "dev", "eth0")  # fmt: skip
        sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        sh("ip", "-n", host.netns, "route", "add", "default", "via", self.gateway)

    def _start_keeper(self, host: NamespaceHost) -> int:
        conf = host.folder / "qemu.conf"
        conf.write_text(qemu_conf())
        script = "set -e\n"
        for folder in PRIVATE:
            script += f"mount -t tmpfs -o mode=0755 tmpfs {folder}\n"
        for folder in SUBDIRS:
            script += f"mkdir -p {folder}\n"
        if CAPABILITIES.is_dir():
            # Staged on the shared filesystem: under the tmpfs the machine's copy is hidden.
            staged = host.folder / "capabilities"
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(CAPABILITIES, staged)
            script += f"cp -a {staged} /var/cache/libvirt/qemu/\n"
        script += f"mount --bind {conf} {QEMU_CONF}\n"
        script += "exec sleep infinity\n"
        # ip netns exec and unshare both exec (no fork): the pid is the keeper's.
        log = (host.folder / "keeper.log").open("ab")
        with log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", host.netns,
                 "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"host {host.name}'s keeper exited: {host.folder}/keeper.log")
            with contextlib.suppress(OSError):
                if Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep":
                    return proc.pid
            time.sleep(0.05)
        raise RuntimeError(f"host {host.name}'s keeper did not start")

    def _start_libvirtd(self, host: NamespaceHost) -> None:
        conf = host.folder / "libvirtd.conf"
        conf.write_text(libvirtd_conf(host.address))
        for daemon in ("virtlogd", "libvirtd"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((host.folder / f"{daemon}.pid").read_text()), signal.SIGKILL)
            (host.folder / f"{daemon}.pid").unlink(missing_ok=True)
        host.run("virtlogd", "-d", "-p", str(host.folder / "virtlogd.pid"))
        # Its parent returns only once the daemon is ready (several seconds, mostly waiting):
        # not waited for here, so that several hosts start side by side.
        pidfile = str(host.folder / "libvirtd.pid")
        host.popen(["libvirtd", "-d", "--listen", "-f", str(conf), "-p", pidfile],
                   log=host.folder / "libvirtd.log")  # fmt: skip

    def remove_host(self, name: str) -> None:
        host = self.hosts.pop(name, None)
        if host is not None:
            stop_all(host)
            # The pair goes with the namespace, but only once nothing holds it any more.
            sh("ip", "link", "del", host.netns[:15], check=False)
            sh("ip", "netns", "del", host.netns, check=False)
            self._save()

    def remove(self) -> None:
        """Every host (all their processes), then the bridge and the lab's record."""
        for name in list(self.hosts):
            self.remove_host(name)
        sh("ip", "link", "del", self.bridge, check=False)
        self.state_file.unlink(missing_ok=True)


def stop_all(
    host: NamespaceHost, grace: float = 5.0, keep: frozenset[int] | set[int] = frozenset()
) -> None:
    """Stop every process in the host's network namespace but ``keep``: SIGTERM, then
    SIGKILL."""

    def left() -> list[int]:
        return [p for p in host.pids() if p not in keep]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while left() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not left():
            return


def libvirtd_conf(address: str) -> str:
    # Plain TCP without authentication: the lab's own bridge only (see docs/hosts.md for a
    # real host's TLS).
    return (
        "listen_tls = 0\n"
        "listen_tcp = 1\n"
        'auth_tcp = "none"\n'
        f'listen_addr = "{address}"\n'
        'unix_sock_group = "root"\n'
    )


def qemu_conf() -> str:
    """Guests as root, no security driver, no cgroups: what works in these containers (as
    ``scripts/start-libvirtd.sh`` sets for the machine's own libvirtd)."""
    return 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\ncgroup_controllers = [ ]\n'


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lamina.launcher.nshosts", description=__doc__)
    parser.add_argument("--prefix", default="lamina")
    parser.add_argument("--dir", type=Path, required=True, help="the lab's folder")
    parser.add_argument("--subnet", default="10.99.0.0/24")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make (or repair) the hosts named")
    up.add_argument("hosts", nargs="+")
    sub.add_parser("down", help="remove every host of the lab, and its bridge")
    sub.add_parser("show", help="print the lab's record")
    args = parser.parse_args(argv)
    if shutil.which("nsenter") is None:
        raise SystemExit("nsenter not found (Debian package util-linux)")
    lab = Lab(args.prefix, args.dir, args.subnet)
    if args.command == "up":
        for host in lab.add_hosts(args.hosts):
            print(f"{host.name} {host.address} netns {host.netns}")
    elif args.command == "down":
        lab.remove()
    else:
        print(lab.state_file.read_text() if lab.state_file.exists() else "{}")


if __name__ == "__main__":
    main()
