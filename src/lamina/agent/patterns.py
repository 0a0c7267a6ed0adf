"""Volume backends as command patterns (VBS "command line extraction").

A backend is one TOML file (``patterns/<name>.toml``): each operation is a list of commands,
each command a list of argv elements with ``{parameter}`` placeholders. Rendering substitutes
validated values inside single elements (a value never becomes two arguments, and nothing
goes through a shell); running uses a timeout and captures the output, and a non-zero exit
raises ``CommandFailed``. Adding a backend is writing a pattern file.

Pattern file keys:

- ``name``, ``description``, ``export_format`` (``raw`` or ``qcow2``: what the host's QEMU
  reads over iSCSI);
- ``root`` (template of the folder, VG or pool the volumes live in; absent: the agent's
  ``volume_root``), ``volume_path`` and ``snapshot_path`` (templates of an object's path);
- ``[operations]``: ``create``, ``delete``, ``snapshot``, ``delete_snapshot``,
  ``create_from_snapshot``, ``clone_from_snapshot`` (absent when the backend cannot clone
  copy-on-write), ``extend``, ``export``, ``unexport``, ``show_exports``, ``info`` and
  optionally ``list`` (names one per line; absent: the files of ``root``), ``measure`` and
  ``pad`` (for qcow2: the file is padded to its fully allocated size so that a fixed-size
  iSCSI LUN leaves the image room to grow), ``allow`` and ``disallow`` (another initiator
  let in to an export, or let go: an instance moving between hosts);
- ``[info]``: where ``info``'s JSON output holds ``size``, ``allocated`` and ``backing``
  (dotted key paths; a missing ``allocated`` means fully allocated);
- ``[timeouts]``: seconds per operation, ``default`` for the rest.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import posixpath
import re
import string
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from lamina.commands import run
from lamina.errors import ConfigError, InvalidRequest

log = logging.getLogger(__name__)

VOLUME_ID = r"^vol-[0-9a-f]{8,32}$"
SNAPSHOT_ID = r"^snap-[0-9a-f]{8,32}$"
OPERATIONS = frozenset(
    {
        "create",
        "delete",
        "snapshot",
        "delete_snapshot",
        "create_from_snapshot",
        "clone_from_snapshot",
        "extend",
        "export",
        "unexport",
        "show_exports",
        "info",
        "list",
        "measure",
        "pad",
        "allow",
        "disallow",
    }
)
REQUIRED = frozenset(
    OPERATIONS - {"clone_from_snapshot", "list", "measure", "pad", "allow", "disallow"}
)
DEFAULT_TIMEOUT = 120.0

_PATH_CHARS = re.compile(r"^[A-Za-z0-9_./:-]+$")


def _regex(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern)
    return lambda value: compiled.fullmatch(value) is not None


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_path(value: str) -> bool:
    # Absolute folders, or relative names such as an RBD pool; never an option, never "..".
    return (
        bool(_PATH_CHARS.fullmatch(value))
        and not value.startswith("-")
        and ".." not in value.split("/")
        and "//" not in value
    )


#: Parameter name -> check of its value. Every placeholder must name one of these.
PARAMETER_TYPES: dict[str, Callable[[str], bool]] = {
    "volume": _regex(VOLUME_ID),
    "snapshot": _regex(SNAPSHOT_ID),
    "name": _regex(r"^(vol|snap)-[0-9a-f]{8,32}$"),
    "size": _regex(r"^[1-9][0-9]{0,19}$"),
    "export_bytes": _regex(r"^[1-9][0-9]{0,19}$"),
    "root": _is_path,
    "path": _is_path,  # and inside root: checked in render()
    "snapshot_path": _is_path,
    "vg": _regex(r"^[A-Za-z0-9_.+][A-Za-z0-9_.+-]{0,126}$"),
    "pool": _regex(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,126}$"),
    "tid": _regex(r"^[1-9][0-9]{0,4}$"),
    "lun": _regex(r"^[0-9]{1,4}$"),
    "iqn": _regex(r"^iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9][A-Za-z0-9._-]*)?$"),
    "initiator_address": _is_address,
}
_INSIDE_ROOT = ("path", "snapshot_path")

Command = tuple[str, ...]


@dataclass(frozen=True)
class Backend:
    """One backend's command patterns, loaded from its TOML file."""

    name: str
    export_format: Literal["raw", "qcow2"]
    volume_path: str
    snapshot_path: str
    operations: Mapping[str, tuple[Command, ...]]
    root: str | None = None
    description: str = ""
    info_keys: Mapping[str, str] = field(default_factory=dict)
    timeouts: Mapping[str, float] = field(default_factory=dict)

    @property
    def can_clone(self) -> bool:
        """Whether the backend can create a volume from a snapshot copy-on-write."""
        return "clone_from_snapshot" in self.operations

    @property
    def file_based(self) -> bool:
        """Volumes are files under the agent's ``volume_root`` (listed from the folder)."""
        return self.root is None

    def has(self, operation: str) -> bool:
        return operation in self.operations

    def timeout(self, operation: str) -> float:
        return float(self.timeouts.get(operation, self.timeouts.get("default", DEFAULT_TIMEOUT)))

    def render(self, operation: str, params: Mapping[str, object]) -> list[list[str]]:
        """The argv lists of ``operation`` with ``params`` substituted.

        Raises ``InvalidRequest`` for an unknown operation, a missing parameter or a value
        its type refuses (a path outside ``root``, an option-looking or spaced value, ...).
        """
        try:
            commands = self.operations[operation]
        except KeyError:
            raise InvalidRequest(
                f"volume backend {self.name!r} has no {operation!r} operation"
            ) from None
        values = _validated(params)
        return [[_fill(element, values) for element in command] for command in commands]

    def object_path(self, template: str, params: Mapping[str, object]) -> str:
        """``volume_path`` or ``snapshot_path`` rendered (checked like a parameter)."""
        values = _validated({k: v for k, v in params.items() if k not in _INSIDE_ROOT})
        return _fill(template, values)


def _validated(params: Mapping[str, object]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, raw in params.items():
        if raw is None:
            continue
        check = PARAMETER_TYPES.get(key)
        if check is None:
            raise InvalidRequest(f"unknown command parameter {key!r}")
        value = str(raw)
        if not check(value):
            raise InvalidRequest(f"refused value for command parameter {key}: {value!r}")
        values[key] = value
    root = values.get("root")
    for key in _INSIDE_ROOT:
        if key in values:
            path = values[key]
            if (
                root is None
                or posixpath.normpath(path) != path
                or posixpath.dirname(path) != posixpath.normpath(root)
            ):
                raise InvalidRequest(f"{key} {path!r} is not directly inside {root!r}")
    return values


def _fields(template: str) -> list[str]:
    return [name for _text, name, _spec, _conv in string.Formatter().parse(template) if name]


def _fill(template: str, values: Mapping[str, str]) -> str:
    out = []
    for text, name, spec, conversion in string.Formatter().parse(template):
        out.append(text)
        if name is None:
            continue
        if spec or conversion:
            raise InvalidRequest(f"placeholder {{{name}}} may not have a format spec")
        try:
            out.append(values[name])
        except KeyError:
            raise InvalidRequest(f"command parameter {name!r} is missing") from None
    return "".join(out)


# -- loading -----------------------------------------------------------------------------


def backend_names() -> list[str]:
    """The built-in pattern files' names."""
    folder = resources.files("lamina.agent") / "patterns"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_backend(name: str, path: Path | None = None) -> Backend:
    """The built-in backend ``name`` (or the pattern file at ``path``).

    Raises ``ConfigError`` for an unknown name (listing the known ones) or a bad file.
    """
    if path is None:
        if not re.fullmatch(r"[a-z0-9_]+", name) or name not in backend_names():
            raise ConfigError(
                f"unknown volume backend {name!r}; known: {', '.join(backend_names())}",
                key="agent.volume_backend",
            )
        text = (resources.files("lamina.agent") / "patterns" / f"{name}.toml").read_text()
        where = f"patterns/{name}.toml"
    else:
        text, where = path.read_text(), str(path)
    try:
        return parse_backend(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"volume backend {where}: {exc}") from None


def parse_backend(data: Mapping[str, Any]) -> Backend:
    """A ``Backend`` from a pattern file's data; raises ``ValueError`` when it is unusable."""
    operations: dict[str, tuple[Command, ...]] = {}
    for op, commands in dict(data["operations"]).items():
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}")
        if not isinstance(commands, list) or not commands:
            raise ValueError(f"operation {op!r} must be a list of commands")
        parsed = []
        for command in commands:
            if not isinstance(command, list) or not command:
                raise ValueError(f"operation {op!r}: each command is a list of strings")
            if not all(isinstance(e, str) for e in command):
                raise ValueError(f"operation {op!r}: each command is a list of strings")
            if _fields(command[0]):
                raise ValueError(f"operation {op!r}: the program may not be a placeholder")
            for element in command:
                for name in _fields(element):
                    if name not in PARAMETER_TYPES:
                        raise ValueError(f"operation {op!r}: unknown placeholder {{{name}}}")
            parsed.append(tuple(command))
        operations[op] = tuple(parsed)
    missing = REQUIRED - operations.keys()
    if missing:
        raise ValueError(f"operations missing: {', '.join(sorted(missing))}")
    export_format = data["export_format"]
    if export_format not in ("raw", "qcow2"):
        raise ValueError(f"export_format must be raw or qcow2, not {export_format!r}")
    return Backend(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        export_format=export_format,
        root=data.get("root"),
        volume_path=str(data["volume_path"]),
        snapshot_path=str(data["snapshot_path"]),
        operations=operations,
        info_keys=dict(data.get("info", {})),
        timeouts={k: float(v) for k, v in dict(data.get("timeouts", {})).items()},
    )


# -- running -----------------------------------------------------------------------------


def run_all(commands: Sequence[Sequence[str]], timeout: float) -> str:
    """Run commands in order, stopping at the first failure; answer the last one's output."""
    out = ""
    for argv in commands:
        out = run(argv, timeout)
    return out


def json_path(document: Any, dotted: str) -> Any:
    """``a.0.b`` of a decoded JSON document, or None where it does not lead anywhere."""
    value = document
    for part in dotted.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def parse_info(backend: Backend, output: str) -> tuple[int, int, str | None]:
    """(size, allocated, backing path or None) from the ``info`` operation's JSON output."""
    document = json.loads(output)
    keys = {"size": "virtual-size", "allocated": "actual-size", "backing": "backing-filename"}
    keys.update(backend.info_keys)
    size = int(json_path(document, keys["size"]))
    allocated_raw = json_path(document, keys["allocated"])
    backing = json_path(document, keys["backing"])
    allocated = int(allocated_raw) if allocated_raw is not None else size
    return size, allocated, str(backing) if backing else None
