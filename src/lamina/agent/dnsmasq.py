"""One dnsmasq per network on a host: DHCP for the host's guests, DNS for the zone.

Its files live in ``<agent>/networks/<network id>/``: ``dnsmasq.conf`` (everything but the
hosts), ``dhcp-hosts`` (MAC -> address, name) and ``hosts`` (the zone's A and AAAA
records). dnsmasq re-reads the last two on SIGHUP, so adding or removing a guest never
restarts it; a change of the configuration restarts it with the same lease file. (The
configuration names the MACs of secondary NICs, see ``render_dhcp_hosts``: a guest whose
NIC on this network is a secondary one does restart it.)

How the zone is served depends on whether dnsmasq has anywhere to forward other names:

- nowhere (inside a namespace without ``upstream_dns``): ``auth-server`` on the bridge, the
  zone, ``lamina.local`` and each name outside the zone that has a record (a mail
  appliance's domain) are authoritative zones: every answer carries ``aa``, a name under
  them that is not there is NXDOMAIN with the zone's SOA, anything else REFUSED;
- upstream servers (``upstream_dns``, or the host's resolv.conf on the host's network):
  dnsmasq answers on an ``auth-server`` interface only authoritatively and refuses
  recursion there, so the bridge is not one. The zone is still an ``auth-zone`` (the same
  records, NXDOMAIN for a name not there, ``local=`` keeps it from being forwarded), but
  its answers have no ``aa``; other names are forwarded.

Rendering is pure (tested by equality); every value that reaches a file is checked first,
so no value can add a line (an option) of its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from lamina.agent.netns import exec_argv
from lamina.commands import run
from lamina.errors import InvalidRequest
from lamina.wire.protocol import CONFIG_SERVICE_NAME, DNS_NAME, NetworkSpec, bridge_name

log = logging.getLogger(__name__)

CONF = "dnsmasq.conf"
DHCP_HOSTS = "dhcp-hosts"
HOSTS = "hosts"
LEASES = "leases"
PID_FILE = "dnsmasq.pid"
LOG_FILE = "dnsmasq.log"
LEASE_TIME = "1h"
#: Seconds resolvers may keep an authoritative answer: records change as guests come and go.
AUTH_TTL = 60
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
#: The tag of a guest's secondary NICs: they get an address, no route and no DNS server.
SECONDARY = "secondary"

_MX = re.compile(r"^(\d{1,5}) (\S+)$")
_SRV = re.compile(r"^(\d{1,5}) (\d{1,5}) (\d{1,5}) (\S+)$")


@dataclass(frozen=True)
class DnsmasqFiles:
    """The three files of one network's dnsmasq, as text."""

    conf: str
    dhcp_hosts: str
    hosts: str


@dataclass(frozen=True)
class RunAs:
    """The user and group dnsmasq drops to after binding its ports."""

    user: str
    group: str


def _name(value: str, what: str) -> str:
    if len(value) > 253 or not re.fullmatch(DNS_NAME, value):
        raise InvalidRequest(f"{what} {value!r} is not a DNS name")
    return value


def _number(value: str, what: str) -> int:
    number = int(value)
    if number > 65535:
        raise InvalidRequest(f"{what} {number} is above 65535")
    return number


def _txt(value: str) -> str:
    """A TXT record's text as dnsmasq's quoted strings (at most 255 bytes each)."""
    if not value.isprintable():
        raise InvalidRequest("a TXT record's text may not hold control characters")
    chunks: list[str] = []
    current = ""
    for char in value:
        if len((current + char).encode()) > 255:
            chunks.append(current)
            current = ""
        current += char
    chunks.append(current)
    return ",".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def record_lines(spec: NetworkSpec) -> tuple[list[str], list[str]]:
    """(hosts file lines, configuration lines) of the network's records, in their order.

    Raises ``InvalidRequest`` for a value its type refuses."""
    hosts: list[str] = []
    conf: list[str] = []
    for record in spec.records:
        name = _name(record.name, "record name")
        value = record.value
        if record.type in ("A", "AAAA"):
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                raise InvalidRequest(f"{record.type} record {name}: {value!r}") from None
            if (address.version == 4) != (record.type == "A"):
                raise InvalidRequest(f"{record.type} record {name}: {value!r}")
            hosts.append(f"{address} {name}")
        elif record.type == "CNAME":
            conf.append(f"cname={name},{_name(value, 'CNAME target')}")
        elif record.type == "MX":
            match = _MX.fullmatch(value)
            if not match:
                raise InvalidRequest(f"MX record {name}: {value!r} is not '<preference> <host>'")
            preference = _number(match[1], "MX preference")
            conf.append(f"mx-host={name},{_name(match[2], 'MX host')},{preference}")
        elif record.type == "SRV":
            match = _SRV.fullmatch(value)
            if not match:
                raise InvalidRequest(
                    f"SRV record {name}: {value!r} is not '<priority> <weight> <port> <target>'"
                )
            priority, weight, port = (_number(match[i], "SRV field") for i in (1, 2, 3))
            target = _name(match[4], "SRV target")
            conf.append(f"srv-host={name},{target},{port},{priority},{weight}")
        else:  # TXT
            conf.append(f"txt-record={name},{_txt(value)}")
    return hosts, conf


def check_spec(spec: NetworkSpec) -> None:
    """Raise ``InvalidRequest`` unless every value of ``spec`` fits its file."""
    try:
        network = ipaddress.IPv4Network(spec.cidr)
    except ValueError:
        raise InvalidRequest(f"network {spec.network}: {spec.cidr!r} is not an IPv4 CIDR") from None
    if not 8 <= network.prefixlen <= 30:
        raise InvalidRequest(f"network {spec.network}: {spec.cidr} must be /8 to /30")
    for what, value in [("address", spec.address), *(("host", h.ip) for h in spec.hosts)]:
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError:
            raise InvalidRequest(f"network {spec.network}: {what} {value!r}") from None
        if address not in network or address in (
            network.network_address,
            network.broadcast_address,
        ):
            raise InvalidRequest(
                f"network {spec.network}: {what} {value} is not a host of {spec.cidr}"
            )
    for server in spec.upstream_dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidRequest(f"network {spec.network}: upstream DNS {server!r}") from None
    _name(spec.domain, "zone")
    record_lines(spec)


def render_dhcp_hosts(spec: NetworkSpec) -> str:
    """``dhcp-hostsfile``: ``mac,ip`` per guest NIC.

    No names: a lease with a name enters the zone beside the hosts file's record of it, and
    a query got the address twice; the guest takes its hostname from its config disk. No
    tags either: dnsmasq 2.90 exits on SIGHUP when a host of this file with a ``set:`` tag
    holds a lease (checked; ``dhcp-hostsdir`` too). Secondary NICs are tagged by
    ``dhcp-mac`` lines of the configuration instead."""
    return "".join(f"{h.mac},{h.ip}\n" for h in spec.hosts)


def render_hosts(spec: NetworkSpec) -> str:
    """``addn-hosts``: the zone's A and AAAA records (several per name: round robin)."""
    hosts, _conf = record_lines(spec)
    return "".join(line + "\n" for line in hosts)


def render_conf(spec: NetworkSpec, folder: Path, run_as: RunAs, upstream: bool) -> str:
    """``dnsmasq.conf`` of the network, its files in ``folder``.

    ``upstream``: whether dnsmasq forwards names outside Lamina's (see the module's
    docstring); with ``spec.upstream_dns`` it forwards to those only."""
    network = ipaddress.IPv4Network(spec.cidr)
    bridge = bridge_name(spec.network)
    zone = spec.domain
    _hosts, records = record_lines(spec)
    lines = [
        f"# network {spec.name} ({spec.network}), written by the Lamina agent",
        "bind-interfaces",
        f"interface={bridge}",
        "except-interface=lo",
        "no-hosts",
        "domain-needed",
        "bogus-priv",
        f"user={run_as.user}",
        f"group={run_as.group}",
        f"pid-file={folder / PID_FILE}",
        f"log-facility={folder / LOG_FILE}",
        # DHCP: the listed guests only, each with its own address.
        f"dhcp-range={network.network_address},static,{network.netmask},{LEASE_TIME}",
        "dhcp-ignore=tag:!known",
        "dhcp-authoritative",
        "dhcp-ignore-names",  # a name a client sends never enters the zone
        f"dhcp-leasefile={folder / LEASES}",
        f"dhcp-hostsfile={folder / DHCP_HOSTS}",
        *(f"dhcp-mac=set:{SECONDARY},{h.mac}" for h in spec.hosts if not h.primary),
    ]
    if spec.mode == "nat":
        lines.append(f"dhcp-option=option:router,{spec.address}")
    if spec.mtu is not None:
        # Forced: busybox udhcpc does not ask for it, and takes it when it comes.
        lines.append(f"dhcp-option-force=option:mtu,{spec.mtu}")
    lines += [
        f"dhcp-option=tag:{SECONDARY},option:router",
        *([] if spec.mode == "nat" else ["dhcp-option=option:router"]),
        f"dhcp-option=option:dns-server,{spec.address}",
        f"dhcp-option=tag:{SECONDARY},option:dns-server",
        f"dhcp-option=tag:!{SECONDARY},option:domain-name,{zone}",
        f"dhcp-option=tag:!{SECONDARY},option:domain-search,{zone}",
        # DNS: the zone from the records, lamina.local (the configuration service). No
        # ``domain=``: with it dnsmasq names each lease after the hosts file's record for its
        # address and answers that name twice (hosts file and lease).
        f"local=/{zone}/",
        f"addn-hosts={folder / HOSTS}",
        f"host-record={CONFIG_SERVICE_NAME},{spec.address}",
        f"auth-zone={zone}",
        f"auth-ttl={AUTH_TTL}",
    ]
    if upstream:
        lines.append(f"auth-server={CONFIG_SERVICE_NAME}")
    else:
        # Nothing else can answer here, so names outside the zone that Lamina holds records
        # for (a mail appliance's domain) are Lamina's too: else they would be REFUSED.
        outside = sorted({r.name for r in spec.records if not _under(r.name, zone)})
        lines += [f"auth-zone={name}" for name in (CONFIG_SERVICE_NAME, *outside)]
        lines.append(f"auth-server={CONFIG_SERVICE_NAME},{bridge}")
    if spec.upstream_dns or not upstream:
        lines.append("no-resolv")
    lines += [f"server={s}" for s in spec.upstream_dns]
    lines += records
    return "".join(line + "\n" for line in lines)


def _under(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def render(spec: NetworkSpec, folder: Path, run_as: RunAs, namespace: str) -> DnsmasqFiles:
    """All three files of the network's dnsmasq (``namespace``: the agent's, "" for the
    host's network, where the host's resolv.conf gives upstream servers)."""
    upstream = bool(spec.upstream_dns) or not namespace
    return DnsmasqFiles(
        conf=render_conf(spec, folder, run_as, upstream),
        dhcp_hosts=render_dhcp_hosts(spec),
        hosts=render_hosts(spec),
    )


def dnsmasq_argv(namespace: str, conf: Path) -> list[str]:
    """Start dnsmasq (it forks into the background once its sockets are bound, so a bad
    configuration or a port in use is this command's exit status)."""
    return exec_argv(namespace, ["dnsmasq", f"--conf-file={conf}"])


# -- who dnsmasq runs as -----------------------------------------------------------------


def _may(st: os.stat_result, uid: int, gid: int, user_bit: int) -> bool:
    shift = 0 if st.st_uid == uid else 3 if st.st_gid == gid else 6
    return bool(st.st_mode & (user_bit >> shift))


def readable_by(folder: Path, uid: int, gid: int) -> bool:
    """Whether user ``uid`` (group ``gid``) can reach files in ``folder`` (every folder
    on the way searchable, ``folder`` readable)."""
    path = folder.resolve()
    for part in [*reversed(path.parents), path]:
        try:
            st = part.stat()
        except OSError:
            return False
        if not _may(st, uid, gid, stat.S_IXUSR):
            return False
    return _may(path.stat(), uid, gid, stat.S_IRUSR)


def choose_run_as(folder: Path) -> RunAs:
    """``nobody`` (and its group) when it can read ``folder``'s files, which dnsmasq
    re-reads after dropping its privileges (on SIGHUP; an unreadable hosts file there
    makes it exit); else root."""
    import grp
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
        group = grp.getgrgid(nobody.pw_gid).gr_name
    except KeyError:
        return RunAs("root", "root")
    if readable_by(folder, nobody.pw_uid, nobody.pw_gid):
        return RunAs("nobody", group)
    log.warning(
        "user nobody cannot read %s (a folder above it is not searchable by others): "
        "dnsmasq runs as root",
        folder,
    )
    return RunAs("root", "root")


# -- the process ---------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []  # gone (a zombie's cmdline is empty too)
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_dnsmasq_of(pid: int, conf: Path) -> bool:
    """Whether process ``pid`` is a live dnsmasq started with ``conf``."""
    argv = _cmdline(pid)
    return bool(argv) and Path(argv[0]).name == "dnsmasq" and f"--conf-file={conf}" in argv


def find_dnsmasqs(prefix: Path) -> dict[int, Path]:
    """pid -> configuration file of every live dnsmasq whose file is under ``prefix``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        if not argv or Path(argv[0]).name != "dnsmasq":
            continue
        for arg in argv[1:]:
            if arg.startswith("--conf-file="):
                conf = Path(arg.removeprefix("--conf-file="))
                if conf.is_relative_to(prefix):
                    found[int(entry.name)] = conf
    return found


def stop_pid(pid: int, conf: Path, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the dnsmasq ``pid`` (SIGTERM, then SIGKILL) and wait until it is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_dnsmasq_of(pid, conf):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and is_dnsmasq_of(pid, conf):
            time.sleep(0.02)
    if is_dnsmasq_of(pid, conf):
        raise OSError(f"dnsmasq {pid} does not stop")


class Dnsmasq:
    """The dnsmasq of one network: its files in ``folder``, run inside ``namespace``."""

    def __init__(self, folder: Path, namespace: str) -> None:
        self.folder = folder
        self.namespace = namespace
        self.conf = folder / CONF

    def pid(self) -> int | None:
        """The running dnsmasq's pid (from its pid file, checked against
        ``/proc/<pid>/cmdline``; else found among all processes), None if none runs."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.folder / PID_FILE).read_text().strip())
            if is_dnsmasq_of(pid, self.conf):
                return pid
        for pid, conf in find_dnsmasqs(self.folder).items():
            if conf == self.conf:
                return pid
        return None

    def converge(self, files: DnsmasqFiles) -> tuple[int, str]:
        """Write the files and make dnsmasq run them: start it if it does not run,
        restart it if the configuration changed, SIGHUP it if only the hosts did.
        Answer its pid and what was done ("started", "restarted", "reloaded", "unchanged").

        Raises ``CommandFailed`` when dnsmasq does not start (its message says why)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        conf_changed = _write(self.conf, files.conf)
        hosts_changed = _write(self.folder / DHCP_HOSTS, files.dhcp_hosts)
        hosts_changed = _write(self.folder / HOSTS, files.hosts) or hosts_changed
        pid = self.pid()
        if pid is None:
            return self._start(), "started"
        if conf_changed:
            stop_pid(pid, self.conf)
            return self._start(), "restarted"
        if hosts_changed:
            os.kill(pid, signal.SIGHUP)
            return pid, "reloaded"
        return pid, "unchanged"

    def _start(self) -> int:
        (self.folder / PID_FILE).unlink(missing_ok=True)
        run(dnsmasq_argv(self.namespace, self.conf), START_TIMEOUT)
        pid = self.pid()
        if pid is None:
            raise OSError(f"dnsmasq of {self.folder.name} exited at once; see {LOG_FILE}")
        log.info("dnsmasq of %s runs as pid %d", self.folder.name, pid)
        return pid

    def stop(self) -> None:
        """Stop it (if it runs) and wait until it has exited."""
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, self.conf)
            log.info("stopped dnsmasq %d of %s", pid, self.folder.name)
        (self.folder / PID_FILE).unlink(missing_ok=True)


def _write(path: Path, text: str) -> bool:
    """Replace ``path`` atomically with ``text`` (readable by all: dnsmasq may run as
    nobody); answer whether it changed."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.chmod(0o644)
    tmp.rename(path)
    return True
