"""iSCSI exports of volumes with tgt (the userspace target, ``tgtd``).

One target per exported volume: a free target id, IQN ``iqn.2026-11.lamina:<volume>``, LUN 1
backed by the volume, access bound to one initiator address (never ``ALL``). The commands
come from the backend's pattern file (``export``, ``unexport``, ``show_exports``); the
state lives in tgtd only, read back by parsing ``tgtadm --op show``, so an agent restart
loses nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lamina.agent.patterns import Backend, run_all
from lamina.commands import run
from lamina.errors import CommandFailed, InvalidState, NotFound, NotSupported
from lamina.wire.protocol import IQN_PREFIX

log = logging.getLogger(__name__)

LUN = 1
MAX_TID = 65535
#: Serialises target-id allocation between the agents of one machine (they share tgtd).
LOCK_PATH = Path("/run/lamina-tgt.lock")


def iqn_for(volume: str) -> str:
    return IQN_PREFIX + volume


@dataclass(frozen=True)
class Target:
    """One tgt target as ``tgtadm --op show`` prints it."""

    tid: int
    iqn: str
    #: LUN number -> backing store path (LUN 0 is tgt's controller: not listed).
    luns: dict[int, str] = field(default_factory=dict)
    acl: tuple[str, ...] = ()


_TARGET = re.compile(r"^Target (\d+): (\S+)$")
_LUN = re.compile(r"^LUN: (\d+)$")
_BACKING = re.compile(r"^Backing store path: (.*)$")


def parse_targets(text: str) -> list[Target]:
    """The targets in the output of ``tgtadm --lld iscsi --mode target --op show``."""
    targets: list[Target] = []
    tid, iqn, luns, acl = 0, "", dict[int, str](), list[str]()
    lun: int | None = None
    section = ""

    def flush() -> None:
        if iqn:
            targets.append(Target(tid, iqn, dict(luns), tuple(acl)))

    for raw in text.splitlines():
        line = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        match = _TARGET.match(raw)
        if match:
            flush()
            tid, iqn, luns, acl, lun, section = int(match[1]), match[2], {}, [], None, ""
            continue
        if indent == 4 and line.endswith(":"):
            section = line[:-1]
            continue
        if section == "LUN information":
            if m := _LUN.match(line):
                lun = int(m[1])
            elif (m := _BACKING.match(line)) and lun is not None and lun != 0:
                luns[lun] = m[1].strip()
        elif section == "ACL information" and line:
            acl.append(line)
    flush()
    return targets


@dataclass(frozen=True)
class Export:
    volume: str
    tid: int
    iqn: str
    path: str
    initiator_address: str


class Tgt:
    """Exports of one volume server's volumes (those backed by its own paths)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _machine_lock(self) -> Iterator[None]:
        with self._lock:
            try:
                f = LOCK_PATH.open("a")
            except OSError:  # not root: in-process lock only
                yield
                return
            with f:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield

    def targets(self) -> list[Target]:
        (command,) = self.backend.render("show_exports", {})
        return parse_targets(run(command, self.backend.timeout("show_exports")))

    def find(self, volume: str, path: str) -> Export | None:
        """The export of ``volume`` (a target with its IQN whose LUN 1 is ``path``)."""
        for target in self.targets():
            if target.iqn == iqn_for(volume) and target.luns.get(LUN) == path:
                return _export(volume, target)
        return None

    def exports(self, paths: dict[str, str]) -> list[Export]:
        """The exports of the volumes in ``paths`` (volume -> path)."""
        found = []
        for target in self.targets():
            volume = target.iqn.removeprefix(IQN_PREFIX)
            if target.iqn.startswith(IQN_PREFIX) and paths.get(volume) == target.luns.get(LUN):
                found.append(_export(volume, target))
        return found

    def export(self, volume: str, path: str, address: str, params: dict[str, str]) -> Export:
        """Export ``volume`` to ``address`` only; the same export again is a no-op.

        Raises ``InvalidState`` when it is exported to another address, ``CommandFailed``
        when tgtadm fails (every step already done is undone).
        """
        with self._machine_lock():
            targets = self.targets()
            for target in targets:
                if target.iqn == iqn_for(volume):
                    if target.luns.get(LUN) == path and target.acl == (address,):
                        return _export(volume, target)
                    raise InvalidState(
                        f"volume {volume} is already exported (target {target.tid}, to "
                        f"{', '.join(target.acl) or 'nobody'}); unexport it first",
                        volume=volume,
                    )
            used = {t.tid for t in targets}
            tid = next(n for n in range(1, MAX_TID + 1) if n not in used)
            commands = self.backend.render(
                "export",
                {
                    **params,
                    "tid": tid,
                    "iqn": iqn_for(volume),
                    "path": path,
                    "initiator_address": address,
                },
            )
            try:
                run_all(commands, self.backend.timeout("export"))
            except Exception:
                if any(t.tid == tid for t in self.targets()):
                    self._delete(tid)
                raise
            log.info("exported %s as target %d to %s", volume, tid, address)
            return Export(volume, tid, iqn_for(volume), path, address)

    def allow(self, volume: str, path: str, address: str, params: dict[str, str]) -> Export:
        """Let ``address`` log in to the volume's target too (a guest moving to its host);
        already let in: a no-op. ``NotFound`` when the volume is not exported."""
        return self._acl("allow", volume, path, address, params)

    def disallow(self, volume: str, path: str, address: str, params: dict[str, str]) -> Export:
        """No longer let ``address`` log in (its sessions go on: a guest that moved away
        has closed its own); not let in: a no-op. ``InvalidState`` for the last initiator
        (unexport instead)."""
        return self._acl("disallow", volume, path, address, params)

    def _acl(self, op: str, volume: str, path: str, address: str, params: dict[str, str]) -> Export:
        with self._machine_lock():
            target = next(
                (t for t in self.targets() if t.iqn == iqn_for(volume) and t.luns.get(LUN) == path),
                None,
            )
            if target is None:
                raise NotFound(f"volume {volume} is not exported", volume=volume)
            if (op == "allow") == (address in target.acl):
                return _export(volume, target)
            if op == "disallow" and target.acl == (address,):
                raise InvalidState(
                    f"{address} is the only initiator of volume {volume}: unexport it instead",
                    volume=volume,
                )
            if op not in self.backend.operations:
                raise NotSupported(f"volume backend {self.backend.name} cannot {op} initiators")
            commands = self.backend.render(
                op, {**params, "tid": target.tid, "initiator_address": address}
            )
            run_all(commands, self.backend.timeout(op))
            log.info("%s %s on target %d of %s", op, address, target.tid, volume)
            return self.find(volume, path) or _export(volume, target)

    def unexport(self, volume: str, path: str) -> bool:
        """Remove the target of ``volume``; answer whether there was one (idempotent)."""
        with self._machine_lock():
            found = self.find(volume, path)
            if found is None:
                return False
            self._delete(found.tid)
            log.info("unexported %s (target %d)", volume, found.tid)
            return True

    def _delete(self, tid: int) -> None:
        commands = self.backend.render("unexport", {"tid": tid})
        try:
            run_all(commands, self.backend.timeout("unexport"))
        except CommandFailed as exc:
            if not any(t.tid == tid for t in self.targets()):
                return  # gone meanwhile
            raise exc


def _export(volume: str, target: Target) -> Export:
    return Export(
        volume=volume,
        tid=target.tid,
        iqn=target.iqn,
        path=target.luns.get(LUN, ""),
        initiator_address=target.acl[0] if target.acl else "",
    )
