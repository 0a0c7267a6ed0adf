"""Port forwards: a guest's TCP port published on the host (like LXD's proxy devices).

Each forward listens on ``bind:host_port`` in the host's own network; for each connection
it connects to ``guest_ip:guest_port`` from inside the agent's namespace (the socket is
made there) and copies bytes both ways, passing on each side's end of stream (half-close)
and closing both when both directions are done. Forwards are kept in
``<agent>/forwards.json`` and listen again when the agent starts.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from lamina.agent import bridges, floating
from lamina.agent.netns import COMMAND_TIMEOUT, socket_in
from lamina.commands import run
from lamina.errors import Conflict, InvalidRequest, LaminaError, NotFound
from lamina.wire.protocol import FORWARD_ID, ForwardInfo, NetworkSpec, PortForward

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
CHUNK = 64 * 1024


class _Listener:
    """One forward's listening socket and its connections."""

    def __init__(self, info: ForwardInfo, requested: PortForward, namespace: str) -> None:
        self.info = info
        self.requested = requested
        self.namespace = namespace
        self.sock = _listen(info.bind, info.host_port)
        self.info = info.model_copy(update={"host_port": self.sock.getsockname()[1]})
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=info.forward, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _peer = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(
                target=self._serve, args=(client,), name=f"{self.info.forward}-conn", daemon=True
            ).start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._open.add(sock)
            return True

    def _serve(self, client: socket.socket) -> None:
        guest: socket.socket | None = None
        try:
            if not self._track(client):
                return
            family = socket.AF_INET6 if ":" in self.info.guest_ip else socket.AF_INET
            guest = socket_in(self.namespace, family)
            if not self._track(guest):
                return
            guest.settimeout(CONNECT_TIMEOUT)
            try:
                guest.connect((self.info.guest_ip, self.info.guest_port))
            except OSError as exc:
                log.info(
                    "forward %s: %s:%d: %s",
                    self.info.forward, self.info.guest_ip, self.info.guest_port, exc,
                )  # fmt: skip
                return
            guest.settimeout(None)
            back = threading.Thread(
                target=_pipe, args=(guest, client), name=f"{self.info.forward}-back", daemon=True
            )
            back.start()
            _pipe(client, guest)
            back.join()
        except OSError as exc:
            log.info("forward %s: %s", self.info.forward, exc)
        finally:
            for sock in (client, guest):
                if sock is not None:
                    with self._lock:
                        self._open.discard(sock)
                    sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            live = list(self._open)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.sock.close()
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends, then end ``dst``'s sending side. A
    failure on either cuts both, so the other direction stops too."""
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except OSError:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _listen(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((bind, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        where = f"[{bind}]:{port}" if family == socket.AF_INET6 else f"{bind}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(f"{where} is already in use", bind=bind, host_port=port) from None
        raise InvalidRequest(f"cannot listen on {where}: {exc.strerror}", bind=bind) from None
    return sock


class ForwardTable:
    """This host's port forwards. ``networks`` answers the networks the host has now
    (a forward's guest must be on one of them)."""

    def __init__(
        self, path: Path, namespace: str, networks: Callable[[], dict[str, NetworkSpec]]
    ) -> None:
        self.path = path
        self.namespace = namespace
        self.networks = networks
        self._listeners: dict[str, _Listener] = {}
        #: Stored forwards that could not listen again at the start: kept on disk.
        self._pending: dict[str, tuple[PortForward, ForwardInfo]] = {}
        self._lock = threading.Lock()

    def _check(self, forward: str, spec: PortForward) -> None:
        if not re.fullmatch(FORWARD_ID, forward):
            raise InvalidRequest(f"{forward!r} is not a forward id", forward=forward)
        for what, value in (("bind", spec.bind), ("guest_ip", spec.guest_ip)):
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise InvalidRequest(f"{what} {value!r} is not an IP address") from None
        network = self.networks().get(spec.network)
        if network is None:
            raise InvalidRequest(
                f"network {spec.network} is not on this host", network=spec.network
            )
        if ipaddress.ip_address(spec.guest_ip) not in ipaddress.ip_network(network.cidr):
            raise InvalidRequest(
                f"{spec.guest_ip} is not on network {spec.network} ({network.cidr})",
                guest_ip=spec.guest_ip,
            )

    def put(self, forward: str, spec: PortForward) -> ForwardInfo:
        """Create or replace forward ``forward``; the same request again is a no-op.
        ``host_port`` 0 picks a free port (kept while the forward lives).

        Raises ``InvalidRequest`` for a bad address or a network this host does not have,
        ``Conflict`` when the address and port are in use (the forward is left as it was)."""
        self._check(forward, spec)
        with self._lock:
            current = self._listeners.get(forward)
            if current is not None and current.requested == spec:
                return current.info
            for other in self._listeners.values():
                same_port = spec.host_port and other.info.host_port == spec.host_port
                if other.info.forward != forward and same_port and other.info.bind == spec.bind:
                    raise Conflict(
                        f"{spec.bind}:{spec.host_port} is forward {other.info.forward}'s",
                        forward=other.info.forward,
                    )
            if current is not None:
                current.close()
            interface, added = self._claim(forward, spec.bind)
            info = ForwardInfo(forward=forward, floating=interface, **spec.model_dump())
            try:
                listener = _Listener(info, spec, self.namespace)
            except Exception:
                if added and interface is not None:
                    self._release(forward, spec.bind, interface)
                if current is not None:  # put the old one back
                    with contextlib.suppress(Exception):
                        self._listeners[forward] = _Listener(
                            current.info, current.requested, self.namespace
                        )
                raise
            self._listeners[forward] = listener
            if current is not None and current.info.floating and current.info.bind != spec.bind:
                self._release(forward, current.info.bind, current.info.floating)
            self._pending.pop(forward, None)
            self._save()
            log.info(
                "forward %s: %s:%d -> %s:%d", forward, listener.info.bind,
                listener.info.host_port, spec.guest_ip, spec.guest_port,
            )  # fmt: skip
            return listener.info

    def delete(self, forward: str) -> None:
        """Stop the forward and cut its connections; an unknown one is a no-op."""
        with self._lock:
            listener = self._listeners.pop(forward, None)
            pending = self._pending.pop(forward, None)
            if listener is not None:
                listener.close()
            info = listener.info if listener is not None else pending[1] if pending else None
            if info is not None and info.floating:
                self._release(forward, info.bind, info.floating)
            if listener is not None or pending is not None:
                self._save()

    # -- floating addresses ----------------------------------------------------------------

    def _claim(self, forward: str, bind: str) -> tuple[str | None, bool]:
        """(the interface ``bind`` floats on, whether it was added now); (None, False) for
        an address of the host's own (or one no network of the host holds: binding it
        then fails with the kernel's reason)."""
        if floating.is_fixed(bind):
            return None, False
        for other in self._listeners.values():
            if other.info.forward != forward and other.info.bind == bind and other.info.floating:
                return other.info.floating, False
        current = self._listeners.get(forward)
        if current is not None and current.info.bind == bind and current.info.floating:
            return current.info.floating, False
        found = bridges.links("")
        if floating.has_address(bind, found):
            return None, False
        interface = floating.floating_interface(bind, found)
        if interface is None:
            return None, False
        self._add(interface, bind, found[interface].mac)
        return interface, True

    @staticmethod
    def _add(interface: str, bind: str, mac: str) -> None:
        run(floating.add_argv(interface, bind), COMMAND_TIMEOUT)
        floating.announce(interface, mac, bind)
        log.info("floating address %s added to %s", bind, interface)

    def _release(self, forward: str, bind: str, interface: str) -> None:
        """Remove the floating ``bind`` unless another forward still uses it."""
        for other in self._listeners.values():
            if other.info.forward != forward and other.info.bind == bind:
                return
        try:
            run(floating.del_argv(interface, bind), COMMAND_TIMEOUT)
            log.info("floating address %s removed from %s", bind, interface)
        except LaminaError as exc:
            log.warning("floating address %s on %s: %s", bind, interface, exc.message)

    def _reclaim(self, info: ForwardInfo) -> None:
        """At the start: a stored forward's floating address again (if it went)."""
        if not info.floating:
            return
        found = bridges.links("")
        link = found.get(info.floating)
        if link is not None and not floating.has_address(info.bind, found):
            self._add(info.floating, info.bind, link.mac)

    def get(self, forward: str) -> ForwardInfo:
        with self._lock:
            listener = self._listeners.get(forward)
        if listener is None:
            raise NotFound(f"forward {forward} does not exist", forward=forward)
        return listener.info

    def list(self) -> list[ForwardInfo]:
        with self._lock:
            return sorted((f.info for f in self._listeners.values()), key=lambda i: i.forward)

    def restore(self) -> None:
        """Listen again for every stored forward (on the port it had); one that cannot is
        logged and kept, to be tried at the next start or replaced by a PUT."""
        try:
            stored = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read %s: %s", self.path, exc)
            return
        with self._lock:
            for forward, entry in stored.get("forwards", {}).items():
                try:
                    requested = PortForward.model_validate(entry["requested"])
                    info = ForwardInfo.model_validate(entry["info"])
                except (ValidationError, KeyError, TypeError) as exc:
                    log.error("forward %s in %s is unreadable: %s", forward, self.path, exc)
                    continue
                try:
                    self._reclaim(info)
                    self._listeners[forward] = _Listener(info, requested, self.namespace)
                except LaminaError as exc:
                    log.error("forward %s cannot listen again: %s", forward, exc.message)
                    self._pending[forward] = (requested, info)

    def _save(self) -> None:
        kept = {f: (lis.requested, lis.info) for f, lis in self._listeners.items()}
        kept.update(self._pending)
        entries = {
            f: {"requested": requested.model_dump(), "info": info.model_dump()}
            for f, (requested, info) in sorted(kept.items())
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w") as f:
            json.dump({"forwards": entries}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(self.path)

    def close(self) -> None:
        """Stop listening (the stored forwards stay, for the next start)."""
        with self._lock:
            for listener in self._listeners.values():
                listener.close()
            self._listeners.clear()
