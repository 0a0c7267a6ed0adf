"""The agent's network namespace: commands and sockets inside it.

The namespace ``""`` is the host's own network: commands run as they are and sockets are
made as usual. Any other name is a named namespace (``ip netns``, ``/run/netns/<name>``)
that the agent creates when it is missing. Python 3.11 has no ``os.setns``: a socket is made
inside a namespace by a worker thread that entered it with libc's ``setns`` (a socket keeps
the namespace it was made in, whichever thread uses it later).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from pathlib import Path
from typing import TypeVar

from lamina.commands import run
from lamina.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
#: A namespace's name: a file name under /run/netns.
NETNS_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
#: A network interface's name (the kernel's limit is 15 bytes; no '/', ':' or spaces).
IFNAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"
COMMAND_TIMEOUT = 30.0


def ip_argv(namespace: str, *args: str) -> list[str]:
    """``ip`` with ``args``, acting inside ``namespace`` (``ip -n``)."""
    return ["ip", "-n", namespace, *args] if namespace else ["ip", *args]


def exec_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``namespace`` (``ip netns exec``)."""
    return ["ip", "netns", "exec", namespace, *argv] if namespace else list(argv)


def netns_add_argv(namespace: str) -> list[str]:
    return ["ip", "netns", "add", namespace]


def check_namespace_name(namespace: str) -> None:
    """Raise ``ConfigError`` unless ``namespace`` is "" or a usable namespace name."""
    if namespace and not re.fullmatch(NETNS_NAME, namespace):
        raise ConfigError(f"bad network namespace name {namespace!r}")


def namespace_exists(namespace: str) -> bool:
    return not namespace or (NETNS_DIR / namespace).exists()


def ensure_namespace(namespace: str) -> None:
    """Create the named namespace unless it exists, with its loopback up (the relay's
    manager connections and tests' upstream DNS servers may use it). ``""`` is a no-op.

    Raises ``CommandFailed`` when ``ip`` fails."""
    if not namespace:
        return
    check_namespace_name(namespace)
    if not namespace_exists(namespace):
        log.info("creating network namespace %s", namespace)
        run(netns_add_argv(namespace), COMMAND_TIMEOUT)
    run(ip_argv(namespace, "link", "set", "lo", "up"), COMMAND_TIMEOUT)


# -- sockets inside a namespace ----------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
#: namespace -> (the inode of its /run/netns file when the worker entered it, the worker)
_workers: dict[str, tuple[int, ThreadPoolExecutor]] = {}
_workers_lock = threading.Lock()


def _enter(namespace: str) -> None:
    fd = os.open(NETNS_DIR / namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {namespace}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _worker(namespace: str) -> ThreadPoolExecutor:
    try:
        inode = (NETNS_DIR / namespace).stat().st_ino
    except OSError as exc:
        raise OSError(f"network namespace {namespace} does not exist") from exc
    with _workers_lock:
        known = _workers.get(namespace)
        if known is not None and known[0] == inode:
            return known[1]
        if known is not None:
            # The namespace was removed and made again: the old thread is in the old one.
            known[1].shutdown(wait=False)
        worker = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"netns-{namespace}",
            initializer=_enter,
            initargs=(namespace,),
        )
        _workers[namespace] = (inode, worker)
        return worker


def in_namespace(namespace: str, call: Callable[[], T]) -> T:
    """``call()`` run by a thread inside ``namespace`` (in the caller's thread for "").

    Keep ``call`` short (making a socket): one thread serves each namespace. Raises what
    ``call`` raises, or ``OSError`` when the namespace cannot be entered."""
    if not namespace:
        return call()
    worker = _worker(namespace)
    try:
        return worker.submit(call).result()
    except BrokenThreadPool as exc:
        # The thread could not enter the namespace: try afresh next time.
        with _workers_lock:
            known = _workers.get(namespace)
            if known is not None and known[1] is worker:
                del _workers[namespace]
        raise OSError(f"cannot enter network namespace {namespace}") from exc


def socket_in(
    namespace: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket that lives in ``namespace``."""
    return in_namespace(namespace, lambda: socket.socket(family, kind))
