"""What Lamina may fetch on a user's behalf: URLs (server-side request forgery) and host paths.

The manager fetches image locations and channel feeds, and hosts fetch boot files, from
URLs that users (or channel publishers) name; without a rule, anyone who may name a URL can
make Lamina read services only it can reach (its own API on loopback, a cloud's metadata
service, hosts on private networks) and learn from the answers. So every such fetch goes
through one ``httpx`` client made here (``http_client``):

* **After DNS, at connect time, on every hop.** The transport resolves the name itself,
  checks *every* address it resolves to (``refused``) and connects to a checked address:
  the connection is pinned to what was checked, so a DNS answer that changes between the check
  and the connection (rebinding) cannot send it elsewhere. TLS still verifies the certificate
  against the URL's name (SNI and the ``Host`` header are the name's). Redirects open new
  connections, each checked the same way. Proxies from the environment are never used: the
  check would see only the proxy.
* **Which addresses.** Refused unless ``allow_private``: loopback, private (RFC 1918),
  shared (CGNAT ``100.64.0.0/10``), unique-local IPv6, and anything else that is not
  globally routable. Refused always: unspecified, link-local (``169.254.0.0/16``,
  ``fe80::/10``, where metadata services live), multicast, reserved, and the metadata
  services' own addresses (``169.254.169.254``, ``fd00:ec2::254``, ``100.100.100.200``).
  An IPv6 address carrying an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
  ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) is judged by the IPv4
  address too. Decimal, octal and hexadecimal spellings (``http://2130706433/``) are what
  the resolver makes of them, so they are judged as the address they name.
* **One answer for every failure.** A refused address, a name that does not resolve, a
  closed port, a timeout, an error status: the caller raises ``LocationUnavailable`` ("the
  location could not be fetched") whatever happened, and only the log says what. Otherwise
  the error messages would map which ports answer behind the manager.

Host paths (``check_path``): a ``file://`` URL or an absolute path is resolved (symlinks,
``..``) and must then lie inside one of the allowed folders; ``open_path`` opens the resolved
path with ``O_NOFOLLOW`` and checks again what it opened.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx

from lamina.errors import InvalidRequest, LocationUnavailable, PathForbidden

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Metadata services outside link-local space (AWS over IPv6, Alibaba).
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


@dataclass(frozen=True)
class FetchPolicy:
    """Which addresses a fetch may connect to."""

    #: Loopback, private and other non-global unicast addresses too (never link-local,
    #: multicast, reserved or metadata addresses).
    allow_private: bool = False


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, bool] | None:
    """The IPv4 address an IPv6 address carries, and whether the IPv6 address is only a
    spelling of it (mapped, compatible, NAT64) rather than an address of its own (6to4,
    Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, True
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), True
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address)), True
    if address.sixtofour is not None:
        return address.sixtofour, False
    if address.teredo is not None:
        return address.teredo[1], False
    return None


def refused(address: IPAddress, policy: FetchPolicy = FetchPolicy()) -> bool:
    """Whether a fetch under ``policy`` must not connect to ``address``."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return not policy.allow_private
        inner = embedded_ipv4(address)
        if inner is not None:
            v4, alias = inner
            if refused(v4, policy) or alias:
                return refused(v4, policy)
    if address in METADATA or address.is_unspecified or address.is_multicast:
        return True
    if address.is_link_local:
        return True
    if address.is_loopback:
        return not policy.allow_private
    if address.is_reserved:
        return True
    if address.is_private or not address.is_global:
        return not policy.allow_private
    return False


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (a literal address, in any spelling the system's
    resolver accepts, resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


class AddressRefused(httpcore.ConnectError):
    """A connection the policy forbids (httpx turns it into a ``ConnectError``)."""


def checked_addresses(host: str, port: int, policy: FetchPolicy) -> list[IPAddress]:
    """The addresses of ``host``, all of them allowed by ``policy``; ``AddressRefused`` if
    any is not (an attacker's name must not mix a public address with a private one) or the
    name does not resolve."""
    try:
        addresses = _resolver(host, port)
    except (OSError, UnicodeError, ValueError) as exc:
        raise AddressRefused(f"cannot resolve {host}: {exc}") from None
    bad = [str(a) for a in addresses if refused(a, policy)]
    if bad or not addresses:
        raise AddressRefused(f"{host} resolves to refused addresses: {', '.join(bad) or 'none'}")
    return addresses


def _resolver(host: str, port: int) -> list[IPAddress]:
    # Looked up at call time so that tests can stand in for DNS.
    return resolve(host, port)


class _GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses the policy allows, resolving the name itself and
    connecting to the very address it checked."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        error: httpcore.ConnectError | None = None
        for address in checked_addresses(host, port, self.policy):
            try:
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error or AddressRefused(f"{host} has no address")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise AddressRefused("no unix sockets")


class GuardedTransport(httpx.HTTPTransport):
    """An ``httpx`` transport whose every connection is checked by ``policy``."""

    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__(trust_env=False)
        # httpx has no option for the network backend; replace the pool it built with one
        # that connects through the guard (``_pool`` is what every request goes through).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=_GuardedBackend(policy),
        )


def http_client(
    policy: FetchPolicy,
    *,
    timeout: float | httpx.Timeout = 30.0,
    max_redirects: int = 5,
    follow_redirects: bool = True,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    """A client for URLs users name: every connection (redirects included) checked."""
    return httpx.Client(
        transport=GuardedTransport(policy),
        trust_env=False,
        timeout=timeout,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        headers=headers,
    )


def check_url(location: str) -> httpx.URL:
    """``location`` as an http(s) URL without credentials, else ``InvalidRequest`` (this
    depends on the text alone, so it may say what is wrong)."""
    try:
        url = httpx.URL(location)
    except (httpx.InvalidURL, TypeError):
        raise InvalidRequest("not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest("only http:// and https:// URLs can be fetched")
    if url.userinfo:
        raise InvalidRequest(
            "the URL carries credentials (user:password@); they would be stored for others "
            "to read: use a pre-signed or public URL"
        )
    return url


def check_reachable(location: str, policy: FetchPolicy) -> httpx.URL:
    """Check, without connecting, that ``location`` is an http(s) URL whose name resolves
    only to addresses ``policy`` allows. ``InvalidRequest`` for a malformed URL,
    ``LocationUnavailable`` otherwise (whatever the reason, which goes to the log)."""
    url = check_url(location)
    try:
        checked_addresses(url.host, url.port or (443 if url.scheme == "https" else 80), policy)
    except AddressRefused as exc:
        raise unavailable(location, exc) from None
    return url


def unavailable(location: str | httpx.URL, reason: object) -> LocationUnavailable:
    """The one error of a fetch that failed or was refused; the reason goes to the log."""
    log.warning("fetching %s failed: %s", redact(location), reason)
    return LocationUnavailable()


def redact(url: httpx.URL | str) -> str:
    """``url`` for logs and messages: no credentials, no query string (tokens), no fragment."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    shown = parsed.copy_with(userinfo=b"", query=None, fragment=None)
    return str(shown) + ("?..." if parsed.query else "")


# -- host paths ------------------------------------------------------------------------------


def local_path(source: str) -> Path | None:
    """The path a ``file://`` URL or an absolute path names (not yet resolved), None for
    anything else. ``InvalidRequest`` for a ``file://`` URL naming another machine."""
    if source.startswith("/"):
        return Path(source)
    parsed = urllib.parse.urlsplit(source)
    if parsed.scheme.lower() != "file":
        return None
    if parsed.netloc not in ("", "localhost"):
        raise InvalidRequest("a file:// URL must name a path on this machine")
    return Path(urllib.parse.unquote(parsed.path))


def is_local(source: str) -> bool:
    """Whether ``source`` names a host path (absolute, or a ``file:`` URL)."""
    return source.startswith("/") or source[:5].lower() == "file:"


def check_path(path: Path, roots: Sequence[Path]) -> Path:
    """``path`` resolved (symlinks followed, ``..`` removed), if it then lies inside one of
    ``roots`` (themselves resolved); else ``Forbidden`` (code ``path_forbidden``) without
    saying whether it exists."""
    if not path.is_absolute() or "\x00" in str(path):
        raise PathForbidden()
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        real = None
    if real is not None:
        for root in roots:
            try:
                inside = real.is_relative_to(root.resolve(strict=True))
            except (OSError, RuntimeError):
                continue
            if inside and real != root.resolve():
                return real
    log.warning("refused host path %s (allowed folders: %s)", path, [str(r) for r in roots])
    raise PathForbidden()


def open_path(path: Path, roots: Sequence[Path]) -> tuple[int, os.stat_result]:
    """Open a regular file at ``path`` for reading if it lies inside ``roots``: resolved,
    opened with ``O_NOFOLLOW``, and what was opened checked again (a folder swapped for a
    symlink between the check and the open is caught). The descriptor and its ``fstat``."""
    real = check_path(path, roots)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        log.warning("refused host path %s: %s", path, exc.strerror)
        raise PathForbidden() from None
    try:
        info = os.fstat(fd)
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not stat.S_ISREG(info.st_mode) or check_path(opened, roots) != opened:
            raise PathForbidden()
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info
