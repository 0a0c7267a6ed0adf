"""What a layered instance boots: its substrate's kernel and initramfs, and its read-only
layers lowest first (the substrate's, the application's, a captured deployment's).

The substrate is looked up afresh each time (``layered_boot``): the newest *installed*
substrate that meets the application's ``<substrate>`` requirement. So installing a newer
substrate reaches every instance built on it the next time it boots, while its application,
deployment and instance layers stay as they are.

How the guest finds its disks is fixed by compute (``lamina.compute.boot``): by virtio
serial number, named on the kernel command line here
(``lamina.layers=l0,l1,... lamina.upper=upper lamina.config=config``), so it never guesses
from device order.

Compute boots what this module hands it: the files at deployment (``lamina.appliances.deploy``)
and, before each start, the boot as of now (``register_appliance_lifecycle``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.appliances.models import InstalledAppliance
from lamina.compute.boot import CONFIG, UPPER, BootSource, image_source, layer_serial
from lamina.compute.lifecycle import InstanceLifecycle, LayeredFiles
from lamina.errors import InvalidState
from lamina.formats.definition import Appliance, Blob
from lamina.formats.parsing import parse_appliance
from lamina.formats.versions import Version
from lamina.identity.principal import Principal
from lamina.images import service as images

if TYPE_CHECKING:
    from lamina.compute.models import Instance


@dataclass(frozen=True)
class BootFile:
    """A file of an installed appliance: its image, what an instance records for it
    (``lamina.compute.boot.image_ref``) and its digest."""

    image: str
    source: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"image": self.image, "source": self.source, "sha256": self.sha256}

    @property
    def boot_source(self) -> BootSource:
        return BootSource(self.source, self.image, self.sha256)


@dataclass(frozen=True)
class LayeredBoot:
    substrate: InstalledAppliance
    kernel: BootFile
    initrd: BootFile | None
    #: The substrate's own kernel arguments.
    cmdline: str
    layers: tuple[BootFile, ...]


def kernel_cmdline(substrate_args: str, layer_count: int) -> str:
    """The command line of a layered guest: console, the substrate's own arguments, and the
    serial numbers of its disks."""
    names = ",".join(layer_serial(i) for i in range(layer_count))
    parts = ["console=ttyS0", substrate_args.strip(), f"lamina.layers={names}"]
    parts += [f"lamina.upper={UPPER}", f"lamina.config={CONFIG}"]
    return " ".join(p for p in parts if p)


def layered_boot(
    session: Session, who: Principal, row: InstalledAppliance, appliance: Appliance
) -> LayeredBoot:
    """The boot of an instance of ``row`` (a substrate or an application) now. InvalidState
    when no installed substrate meets its requirement or a file is not available."""
    if appliance.kind == "substrate":
        substrate, base = row, appliance
        own: tuple[BootFile, ...] = ()
    else:
        substrate, base = newest_substrate(session, row, appliance)
        own = tuple(file_of(session, who, row, appliance, b) for b in appliance.layers)
    if base.kernel is None:
        raise InvalidState(f"substrate {substrate.name} {substrate.version} has no kernel")
    return LayeredBoot(
        substrate=substrate,
        kernel=file_of(session, who, substrate, base, base.kernel),
        initrd=file_of(session, who, substrate, base, base.initrd) if base.initrd else None,
        cmdline=base.cmdline or "",
        layers=tuple(file_of(session, who, substrate, base, b) for b in base.layers) + own,
    )


def current_boot(session: Session, instance: Instance) -> LayeredFiles:
    """The kernel, initrd, command line and layers a layered instance boots with now."""
    row = session.get(InstalledAppliance, instance.appliance_id)
    if row is None:
        raise InvalidState(f"the appliance of instance {instance.name} is not installed")
    # The system boots the instance: the files of installed appliances are its to read.
    system = Principal(instance.owner or "", "system", "admin", via="system")
    boot = layered_boot(session, system, row, parse_appliance(row.definition))
    return LayeredFiles(
        kernel=boot.kernel.source,
        initrd=boot.initrd.source if boot.initrd else None,
        cmdline=kernel_cmdline(boot.cmdline, len(boot.layers)),
        layers=[f.as_dict() for f in boot.layers],
    )


def provides(session: Session, appliance_id: str) -> tuple[str, ...]:
    """What an installed appliance provides (``mail``, ...); nothing once it is gone."""
    row = session.get(InstalledAppliance, appliance_id)
    return parse_appliance(row.definition).provides if row else ()


def register_appliance_lifecycle(lifecycle: InstanceLifecycle) -> None:
    lifecycle.layered_boot = current_boot
    lifecycle.provides = provides


def newest_substrate(
    session: Session, row: InstalledAppliance, appliance: Appliance
) -> tuple[InstalledAppliance, Appliance]:
    requirement = appliance.substrate
    if requirement is None:
        raise InvalidState(f"appliance {row.name} names no substrate")
    found = []
    query = select(InstalledAppliance).where(
        InstalledAppliance.kind == "substrate", InstalledAppliance.status == "installed"
    )
    for candidate in session.scalars(query):
        parsed = parse_appliance(candidate.definition)
        if parsed.satisfies(requirement):
            found.append((candidate, parsed))
    if not found:
        raise InvalidState(
            f"appliance {row.name} builds on substrate {requirement}, which is not installed "
            f"(lamina appliance install {requirement.name})",
            substrate=str(requirement),
        )
    return max(found, key=lambda pair: Version.parse(pair[0].version))


def file_of(
    session: Session, who: Principal, row: InstalledAppliance, appliance: Appliance, blob: Blob
) -> BootFile:
    """One of the appliance's files: its image, as an instance records it."""
    # ``row.images`` follows ``Appliance.blobs()``.
    image = images.get_image(session, row.images[appliance.blobs().index(blob)], who)
    if image.status != "available" or not image.location or not image.sha256:
        raise InvalidState(
            f"image {image.id} of appliance {row.name} is {image.status}", image=image.id
        )
    source = image_source(image)
    return BootFile(image.id, source.location, image.sha256)
