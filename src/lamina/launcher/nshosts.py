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
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
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
#: The private folder a persistent lab keeps in each host's folder (guests' definitions).
PERSISTENT = "/etc/libvirt/qemu"
#: tgtd's control socket folder: private to each host too, so ``tgtadm`` inside a host talks
#: to that host's own tgtd (a volume server's, :meth:`Lab.start_tgtd`) and never to the
#: machine's.
TGTD_DIR = "/run/tgtd"
#: The files of a migration certificate's folder (``lamina.agent.migration_tls``) that
#: libvirtd and QEMU read.
PKI_FILES = (
    "cacert.pem", "servercert.pem", "serverkey.pem", "clientcert.pem", "clientkey.pem",
    "ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem",
)  # fmt: skip
#: tgtd's allocator (as scripts/start-tgtd.sh sets it: docs/benchmarks.md, section 6).
TGTD_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=33554432"
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
    #: The folder of its migration certificate once :meth:`Lab.use_tls` was given one: its
    #: libvirtd then listens with TLS only (no plain TCP), QEMU's migration streams are TLS
    #: and must be. "": plain TCP without authentication, on the lab's bridge only.
    pki: str = ""
    #: Whether it runs a tgtd of its own (a volume server: :meth:`Lab.start_tgtd`).
    tgtd: bool = False

    @property
    def folder(self) -> Path:
        return Path(self.root)

    @property
    def migration_uri(self) -> str:
        """Its libvirtd as a peer reaches it: TLS once it has a certificate, else plain TCP
        (inside the lab only)."""
        scheme = "qemu+tls" if self.pki else "qemu+tcp"
        return f"{scheme}://{self.address}/system"

    def peer_uri(self, dest: NamespaceHost) -> str:
        """``dest``'s libvirtd as this host's opens it for a peer-to-peer migration: over
        TLS, with this host's certificate as the client's (``pkipath``)."""
        if not dest.pki:
            return dest.migration_uri
        if not self.pki:
            raise RuntimeError(f"host {self.name} has no certificate to reach {dest.name} with")
        return f"{dest.migration_uri}?pkipath={self.pki}"

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
        """The pids of its keeper, libvirtd and virtlogd (and tgtd's processes)."""
        pids = {self.keeper}
        for daemon in ("libvirtd", "virtlogd"):
            with contextlib.suppress(OSError, ValueError):
                pids.add(int((self.folder / f"{daemon}.pid").read_text()))
        if self.tgtd:
            pids.update(self.tgtd_pids())
        return pids

    def tgtd_pids(self) -> set[int]:
        """Its tgtd's processes (tgtd forks a second one)."""
        pids = set()
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "tgtd":
                    pids.add(pid)
        return pids

    def tgtd_answers(self) -> bool:
        if not self.keeper_alive():
            return False
        argv = self.enter(["tgtadm", "--mode", "sys", "--op", "show"])
        try:
            return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def remove_targets(self) -> None:
        """Withdraw every iSCSI target of its tgtd (if it has one)."""
        if not (self.tgtd and self.tgtd_answers()):
            return
        shown = self.run("tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show",
                         check=False)  # fmt: skip
        for line in shown.splitlines():
            if line.startswith("Target ") and ":" in line:
                tid = line.split()[1].rstrip(":")
                self.run("tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete",
                         "--force", "--tid", tid, check=False)  # fmt: skip

    def reset(self) -> None:
        """Back to a fresh host, its daemons kept: every guest destroyed and undefined,
        every other process stopped (agents, dnsmasq), every interface but ``lo`` and
        ``eth0`` deleted, the nftables ruleset flushed."""
        for name in self.virsh("list", "--all", "--name", check=False).split():
            self.virsh("destroy", name, check=False)
            self.virsh("undefine", name, "--nvram", check=False)
        self.remove_targets()
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

    def __init__(
        self, prefix: str, root: Path, subnet: str = "10.99.0.0/24", persistent: bool = False
    ) -> None:
        self.prefix = prefix
        #: Hosts' guest definitions (``/etc/libvirt/qemu``) kept in their folders rather than
        #: on tmpfs, so a host made again (``make down``, then ``make up``) still has its
        #: stopped guests, as a real host has after a reboot.
        self.persistent = persistent
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
        for host in hosts:
            if host.tgtd and not host.tgtd_answers():
                self._start_tgtd(host)
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
        conf.write_text(qemu_conf(host))
        script = f"set -e\nmkdir -p {TGTD_DIR}\n"
        for folder in (*PRIVATE, TGTD_DIR):
            if self.persistent and folder == PERSISTENT:
                kept = host.folder / "etc-libvirt-qemu"
                kept.mkdir(exist_ok=True)
                script += f"mount --bind {kept} {folder}\n"
                continue
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
        conf.write_text(libvirtd_conf(host.address, host.pki))
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

    # -- TLS and tgtd (added by the hosts helper) ------------------------------------------

    def use_tls(self, name: str, pki: Path | None) -> bool:
        """Host ``name``'s libvirtd with the migration certificate in ``pki`` (its agent's,
        written at enrolment): TLS only, peers' client certificates checked against the
        CA in it; QEMU's migration streams TLS with the same files (and refused without).
        ``None``: back to plain TCP. Restarts its daemons unless they already use that and
        answer; says whether it did (an agent connected to the old libvirtd fails its next
        call, then connects again)."""
        host = self.hosts[name]
        folder = "" if pki is None else str(pki.resolve())
        missing = [f for f in PKI_FILES if folder and not (Path(folder) / f).is_file()]
        if missing:
            raise RuntimeError(f"{folder} lacks {', '.join(missing)}: has the agent enrolled?")
        if host.pki == folder and host.libvirtd_answers():
            return False
        host.pki = folder
        self._save()
        # Written in place: the keeper's bind mount shows this very file as qemu.conf.
        (host.folder / "qemu.conf").write_text(qemu_conf(host))
        self._start_libvirtd(host)
        self._wait(host, host.libvirtd_answers, "libvirtd")
        return True

    def start_tgtd(self, name: str) -> NamespaceHost:
        """A tgtd of host ``name``'s own (control socket in its private ``/run/tgtd``, iSCSI
        portal on its address, port 3260): what makes it a volume server other hosts'
        guests reach over the bridge. Started again by :meth:`add_hosts` if it died."""
        host = self.hosts[name]
        if not host.tgtd:
            host.tgtd = True
            self._save()
        if not host.tgtd_answers():
            self._start_tgtd(host)
        return host

    def _start_tgtd(self, host: NamespaceHost) -> None:
        for pid in host.tgtd_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        env = {**os.environ, "GLIBC_TUNABLES": TGTD_TUNABLES}
        host.popen(["tgtd", "--pid-file", str(host.folder / "tgtd.pid")], env=env,
                   log=host.folder / "tgtd.log").wait(COMMAND_TIMEOUT)  # fmt: skip
        self._wait(host, host.tgtd_answers, "tgtd")

    @staticmethod
    def _wait(host: NamespaceHost, answers: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + LIBVIRTD_WAIT
        while not answers():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"host {host.name}'s {what} did not answer within {LIBVIRTD_WAIT:g} s "
                    f"(its files: {host.folder})"
                )
            time.sleep(0.2)

    def remove_host(self, name: str) -> None:
        host = self.hosts.pop(name, None)
        if host is not None:
            # tgtd ignores SIGTERM: its targets withdrawn, it is told to exit.
            host.remove_targets()
            if host.tgtd and host.keeper_alive():
                host.run("tgtadm", "--mode", "system", "--op", "delete", check=False)
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


def libvirtd_conf(address: str, pki: str = "") -> str:
    if pki:
        # TLS only: the server's certificate and key, and the CA a peer's client certificate
        # must come from (checked: tls_no_verify_certificate stays 0). docs/migration-tls.md.
        return (
            "listen_tls = 1\n"
            "listen_tcp = 0\n"
            f'listen_addr = "{address}"\n'
            f'key_file = "{pki}/serverkey.pem"\n'
            f'cert_file = "{pki}/servercert.pem"\n'
            f'ca_file = "{pki}/cacert.pem"\n'
            'unix_sock_group = "root"\n'
        )
    # Plain TCP without authentication: the lab's own bridge only (see docs/hosts.md for a
    # real host's TLS).
    return (
        "listen_tls = 0\n"
        "listen_tcp = 1\n"
        'auth_tcp = "none"\n'
        f'listen_addr = "{address}"\n'
        'unix_sock_group = "root"\n'
    )


def qemu_conf(host: NamespaceHost | None = None) -> str:
    """Guests as root, no security driver, no cgroups: what works in these containers (as
    ``scripts/start-libvirtd.sh`` sets for the machine's own libvirtd). For ``host``: the
    address a source's QEMU sends an incoming migration to (the machine's hostname means
    nothing inside a namespace) and, once it has a certificate, QEMU's migration TLS with
    it, required."""
    conf = 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\ncgroup_controllers = [ ]\n'
    if host is not None:
        conf += f'migration_host = "{host.address}"\n'
    if host is not None and host.pki:
        conf += (
            f'migrate_tls_x509_cert_dir = "{host.pki}"\n'
            "migrate_tls_x509_verify = 1\n"
            "migrate_tls_force = 1\n"
        )
    return conf


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lamina.launcher.nshosts", description=__doc__)
    parser.add_argument("--prefix", default="lamina")
    parser.add_argument("--dir", type=Path, required=True, help="the lab's folder")
    parser.add_argument("--subnet", default="10.99.0.0/24")
    parser.add_argument(
        "--persistent", action="store_true", help="keep hosts' guest definitions in DIR"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make (or repair) the hosts named")
    up.add_argument("hosts", nargs="+")
    sub.add_parser("down", help="remove every host of the lab, and its bridge")
    sub.add_parser("show", help="print the lab's record")
    tls = sub.add_parser("tls", help="a host's libvirtd and QEMU with a migration certificate")
    tls.add_argument("host")
    tls.add_argument("pki", type=Path, help="the folder (its agent's pki, after enrolment)")
    plain = sub.add_parser("plain", help="a host's libvirtd back to plain TCP")
    plain.add_argument("host")
    tgtd = sub.add_parser("tgtd", help="start (or repair) a host's own tgtd")
    tgtd.add_argument("host")
    enter = sub.add_parser(
        "enter", help="print the command prefix that runs a command inside a host (nsenter)"
    )
    enter.add_argument("host")
    args = parser.parse_args(argv)
    if shutil.which("nsenter") is None:
        raise SystemExit("nsenter not found (Debian package util-linux)")
    lab = Lab(args.prefix, args.dir, args.subnet, args.persistent)
    if args.command == "up":
        for host in lab.add_hosts(args.hosts):
            print(f"{host.name} {host.address} netns {host.netns}")
    elif args.command == "down":
        lab.remove()
    elif args.command == "tls":
        restarted = lab.use_tls(args.host, args.pki)
        host = lab.hosts[args.host]
        print(f"{host.name} {host.migration_uri} certificate {host.pki}", end="")
        print(" (libvirtd restarted)" if restarted else "")
    elif args.command == "plain":
        lab.use_tls(args.host, None)
        print(f"{args.host} {lab.hosts[args.host].migration_uri}")
    elif args.command == "tgtd":
        host = lab.start_tgtd(args.host)
        print(f"{host.name} tgtd, iSCSI portal {host.address}:3260")
    elif args.command == "enter":
        if args.host not in lab.hosts:
            raise SystemExit(f"no host {args.host!r} (hosts: {', '.join(lab.hosts)})")
        # Printed, not run: `$(... enter h1) virsh list` execs nsenter, whose pid is the
        # command's (nsenter needs no fork for these namespaces).
        print(shlex.join(lab.hosts[args.host].enter([])))
    else:
        print(lab.state_file.read_text() if lab.state_file.exists() else "{}")


if __name__ == "__main__":
    main()
