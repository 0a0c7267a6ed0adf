"""An appliance definition as data: what ``parsing`` reads and ``writing`` writes.

STORM's fields (LISA '08, Figure 2) and Lamina's additions for layered appliances; the XML
form is in ``docs/appliances.md``. Units follow STORM: ``size`` and disk sizes in MiB,
``memory`` in KiB (524288 is 512 MiB).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from lamina.errors import InvalidRequest
from lamina.formats.versions import Version, VersionRange

#: ``substrate``: an OS substrate other appliances build on; ``application``: read-only
#: layers on a substrate; ``traditional``: one disk image (STORM's appliances).
Kind = Literal["substrate", "application", "traditional"]
KINDS: tuple[Kind, ...] = ("substrate", "application", "traditional")
BlobRole = Literal["layer", "image", "kernel", "initrd"]
VariableType = Literal["string", "int", "bool", "ipv4", "ipv6", "hostname"]
DiskType = Literal["system", "swap", "user"]
Protocol = Literal["tcp", "udp"]
#: The numbers a ``<port>`` may have.
PORT_NUMBERS = range(1, 65536)


@dataclass(frozen=True)
class Requirement:
    """``name[:range]``: a ``<dependency>`` (satisfied by an appliance's name or
    ``provides``) or the ``<substrate>`` an application builds on."""

    name: str
    versions: VersionRange = field(default_factory=VersionRange)

    @classmethod
    def parse(cls, text: str) -> Requirement:
        """``emailserv:1.0.0-0`` (exactly that version), ``firewall`` (any),
        ``debian:>=12,<13``; raise InvalidRequest for a bad range."""
        name, _, versions = text.partition(":")
        return cls(name.strip(), VersionRange.parse(versions))

    def __str__(self) -> str:
        return f"{self.name}:{self.versions}" if self.versions.clauses else self.name


@dataclass(frozen=True)
class Blob:
    """A file an appliance is made of, named by its SHA-256. ``source`` (a path in the
    publisher's appliance folder) exists only in the source form ``channel build`` reads;
    ``sha256`` and ``size`` are always set in a published definition."""

    role: BlobRole
    format: str | None = None  # layers: squashfs, erofs; images: qcow2, raw, iso
    sha256: str | None = None
    size: int | None = None
    source: str | None = None


@dataclass(frozen=True)
class Disk:
    """A ``<hardware><disk>`` of STORM: ``system`` (``file`` in the image), ``swap`` or
    ``user`` (``size_mib``)."""

    name: str
    type: DiskType
    file: str | None = None
    size_mib: int | None = None


@dataclass(frozen=True)
class Hardware:
    cpus: int | None = None
    memory_kib: int | None = None
    ostype: str | None = None
    disks: tuple[Disk, ...] = ()

    @property
    def memory_mib(self) -> int | None:
        return None if self.memory_kib is None else -(-self.memory_kib // 1024)


@dataclass(frozen=True)
class Variable:
    """An instance variable the administrator sets at deploy time."""

    name: str
    type: VariableType = "string"
    default: str | None = None
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Port:
    """A port the appliance's service listens on (``<ports><port>``), as Docker's ``EXPOSE``
    or an OVF product's service port: what to open or forward to reach it. Its ``number`` is
    fixed, or is the value of the int ``variable`` an instance is deployed with (then
    ``number`` is None); ``Appliance.port_number`` gives it either way."""

    number: int | None = None
    protocol: Protocol = "tcp"
    variable: str | None = None
    name: str | None = None  # a service name, e.g. ``http``, ``domain``, ``smtp``
    description: str = ""

    def __str__(self) -> str:
        """``80/tcp``; ``{port}/tcp`` for the value of variable ``port``."""
        number = str(self.number) if self.variable is None else f"{{{self.variable}}}"
        return f"{number}/{self.protocol}"


@dataclass(frozen=True)
class Appliance:
    label: str
    version: Version
    name: str
    kind: Kind = "traditional"
    description: str = ""
    size_mib: int | None = None
    url: str | None = None
    sig: str | None = None
    provides: tuple[str, ...] = ()
    webpanel: str | None = None
    hardware: Hardware | None = None
    dependencies: tuple[Requirement, ...] = ()
    substrate: Requirement | None = None
    layers: tuple[Blob, ...] = ()
    image: Blob | None = None
    kernel: Blob | None = None
    initrd: Blob | None = None
    cmdline: str | None = None
    variables: tuple[Variable, ...] = ()
    ports: tuple[Port, ...] = ()
    templates: tuple[str, ...] = ()

    def blobs(self) -> tuple[Blob, ...]:
        """Every file of the appliance: its layers lowest first, then image, kernel, initrd."""
        rest = (self.image, self.kernel, self.initrd)
        return self.layers + tuple(b for b in rest if b is not None)

    def satisfies(self, requirement: Requirement) -> bool:
        """Whether this appliance (by name or ``provides``) meets a dependency."""
        names = (self.name, *self.provides)
        return requirement.name in names and requirement.versions.contains(self.version)

    def variable(self, name: str) -> Variable:
        """The variable called ``name``; InvalidRequest if the appliance has none."""
        for variable in self.variables:
            if variable.name == name:
                return variable
        known = ", ".join(v.name for v in self.variables) or "none"
        raise InvalidRequest(
            f"appliance {self.name} has no variable {name!r} (it has: {known})",
            variable=name,
        )

    def port_number(self, port: Port, values: Mapping[str, str] | None = None) -> int | None:
        """The number of ``port``: its own, or its variable's value in ``values`` (an
        instance's resolved variables), else the variable's default; None when the variable
        has no value (a required one before deploy, or an optional one left empty)."""
        if port.variable is None:
            return port.number
        given = values.get(port.variable) if values is not None else None
        text = given if given is not None else self.variable(port.variable).default
        return int(text) if text else None
