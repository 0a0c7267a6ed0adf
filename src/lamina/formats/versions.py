"""Appliance versions and version ranges.

Versions compare as Debian's do (``[epoch:]upstream[-revision]``, dpkg's algorithm), so
STORM's ``1.0.0-0`` and the Debian versions substrates are built from order as expected:
``1.0.0-0 < 1.0.1-0``, ``12 < 12.5``, ``2.0~rc1 < 2.0``. A range is a comma-separated list of
clauses that must all hold, each an operator (``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=``) and
a version; a bare version means ``==``; an empty range matches every version.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from lamina.errors import InvalidRequest

_VERSION = re.compile(
    r"(?:(?P<epoch>[0-9]+):)?(?P<upstream>[0-9][A-Za-z0-9.+~-]*?)(?:-(?P<revision>[A-Za-z0-9.+~]+))?"
)
_RUNS = re.compile(r"([^0-9]*)([0-9]*)")
_CLAUSE = re.compile(r"\s*(?P<op>>=|<=|==|!=|>|<)?\s*(?P<version>\S+?)\s*")
_OPS: dict[str, Callable[[int], bool]] = {
    ">=": lambda c: c >= 0,
    ">": lambda c: c > 0,
    "<=": lambda c: c <= 0,
    "<": lambda c: c < 0,
    "==": lambda c: c == 0,
    "!=": lambda c: c != 0,
}


def _order(char: str) -> int:
    if not char or char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    if char == "~":
        return -1
    return ord(char) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's comparison of an upstream version or a revision: alternating non-digit runs
    (letters before other characters, ``~`` before anything, even the end) and numbers."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac, bc = _order(a[i : i + 1]), _order(b[j : j + 1])
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        start_i, start_j = i, j
        while i < len(a) and a[i].isdigit():
            i += 1
        while j < len(b) and b[j].isdigit():
            j += 1
        na, nb = int(a[start_i:i] or 0), int(b[start_j:j] or 0)
        if na != nb:
            return -1 if na < nb else 1
    return 0


def _canonical(part: str) -> tuple[tuple[str, int], ...]:
    """(non-digits, number) pairs that equal parts share, for hashing: ``01`` is ``1`` and
    a missing final number is 0."""
    pairs = [(text, int(number or 0)) for text, number in _RUNS.findall(part) if text or number]
    while pairs and pairs[-1] == ("", 0):
        pairs.pop()
    return tuple(pairs)


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A parsed version; ``Version("1.0.0-0") == Version("1.0.0")`` as in dpkg."""

    text: str
    epoch: int
    upstream: str
    revision: str

    @classmethod
    def parse(cls, text: str) -> Version:
        """Raise InvalidRequest unless ``text`` is ``[epoch:]upstream[-revision]`` with an
        upstream part that starts with a digit."""
        match = _VERSION.fullmatch(text)
        if match is None:
            raise InvalidRequest(
                f"{text!r} is not a version: expected [epoch:]upstream[-revision], the "
                "upstream part starting with a digit (e.g. 1.0.0-0, 12.5, 2:1.4~rc1)"
            )
        return cls(
            text,
            int(match["epoch"] or 0),
            match["upstream"],
            match["revision"] or "",
        )

    def compare(self, other: Version) -> int:
        """Negative, zero or positive as ``self`` is older than, equal to or newer than
        ``other``."""
        if self.epoch != other.epoch:
            return -1 if self.epoch < other.epoch else 1
        return _verrevcmp(self.upstream, other.upstream) or _verrevcmp(
            self.revision, other.revision
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.compare(other) == 0

    def __lt__(self, other: Version) -> bool:
        return self.compare(other) < 0

    def __hash__(self) -> int:
        return hash((self.epoch, _canonical(self.upstream), _canonical(self.revision)))

    def __str__(self) -> str:
        return self.text


def compare_versions(a: str, b: str) -> int:
    """Compare two version strings: negative, zero or positive (``a`` older, equal, newer)."""
    return Version.parse(a).compare(Version.parse(b))


@dataclass(frozen=True)
class VersionRange:
    """Clauses that must all hold; ``VersionRange.parse(">=12,<13")``."""

    clauses: tuple[tuple[str, Version], ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """Raise InvalidRequest for a clause that is not an operator and a version."""
        if not text.strip():
            return cls()
        clauses = []
        for part in text.split(","):
            match = _CLAUSE.fullmatch(part)
            if match is None:
                raise InvalidRequest(
                    f"{part.strip()!r} in version range {text!r} is not an operator "
                    "(>=, >, <=, <, ==, !=) followed by a version"
                )
            try:
                version = Version.parse(match["version"])
            except InvalidRequest as exc:
                raise InvalidRequest(f"version range {text!r}: {exc.message}") from None
            clauses.append((match["op"] or "==", version))
        return cls(tuple(clauses))

    def contains(self, version: Version | str) -> bool:
        """Whether ``version`` satisfies every clause."""
        v = Version.parse(version) if isinstance(version, str) else version
        return all(_OPS[op](v.compare(bound)) for op, bound in self.clauses)

    def __str__(self) -> str:
        return ",".join(f"{'' if op == '==' else op}{version}" for op, version in self.clauses)
