"""Deploying an installed appliance: an instance made from it.

A ``traditional`` appliance deploys as an instance booting from its disk image: the image
(its id and digest, ``lamina.compute.boot.image_ref``) is the instance's ``disk_image``,
which the host fetches through the manager, from whichever store holds it
(``lamina.compute.fetch``), into its content-addressed cache once and puts a qcow2 overlay
on (``instance.create``: ``fetch_boot_files``, ``create_disk``), so an instance disk costs
the same whatever the base's size.

A ``substrate`` or ``application`` appliance deploys as a layered instance
(``lamina.appliances.layered``): the substrate's kernel and initramfs boot its read-only
layers joined by overlayfs under a writable instance layer, with the instance variables on a
config disk that the initramfs renders into the template files at first boot.

Everything is checked before anything is created: the variables (every unknown, missing or
wrongly typed one in one 400), the appliance's kind and state, the images' places.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from lamina.appliances.catalog import find_installed
from lamina.appliances.layered import file_of, kernel_cmdline, layered_boot
from lamina.appliances.models import InstalledAppliance
from lamina.compute import instances, usecases
from lamina.compute.boot import BootSource, BootSources
from lamina.compute.lifecycle import NicRequest
from lamina.errors import InvalidState
from lamina.formats.definition import Appliance, Hardware
from lamina.formats.parsing import parse_appliance
from lamina.formats.variables import resolve_variables
from lamina.identity.principal import Principal
from lamina.jobs.views import describe_job
from lamina.network.lifecycle import attach_nics

if TYPE_CHECKING:
    from lamina.services import Services

#: Memory and vCPUs of an instance whose appliance's ``<hardware>`` does not say.
DEFAULT_MEMORY_MIB = 256
DEFAULT_VCPUS = 1
#: The writable layer of a layered instance whose appliance does not size it (sparse: it
#: takes only what the instance writes).
DEFAULT_UPPER_BYTES = 1024**3


def deploy(
    svc: Services,
    who: Principal,
    ref: str,
    *,
    name: str,
    variables: Mapping[str, str],
    memory_mib: int | None = None,
    vcpus: int | None = None,
    networks: Sequence[NicRequest] | None = None,
    group: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Create an instance of the installed appliance ``ref`` (id, or name: its newest
    installed version unless ``version``) owned by ``who``; answers the instance (described
    as ``GET /instances/{ref}`` describes it), its ``instance.create`` job and the resolved
    variables.

    Raises NotFound (no such appliance, with the closest name), InvalidState (not installed
    though a channel offers it: ``details.installable``; still installing, or failed, or its
    substrate not installed), InvalidRequest (the variables: every problem named; or the
    instance's name, size), and what
    ``create_instance`` raises (quota, capacity, name taken)."""
    with svc.db.write() as s:
        row = find_installed(s, ref, version, deploying=True)
        if row.status != "installed":
            raise InvalidState(
                f"appliance {row.name} {row.version} is {row.status}, not installed",
                appliance=row.id,
                status=row.status,
            )
        appliance = parse_appliance(row.definition)
        values = resolve_variables(appliance, variables)
        hardware = appliance.hardware or Hardware()
        # The appliance's files are images ``who`` may read (``file_of``): the host fetches
        # them from their store.
        boot: dict[str, Any]
        if appliance.kind == "traditional":
            boot = {"boot": BootSources(disk_image=_disk_image(s, who, row, appliance))}
        else:
            layered = layered_boot(s, who, row, appliance)
            boot = {
                "boot": BootSources(
                    kernel=layered.kernel.boot_source,
                    initrd=layered.initrd.boot_source if layered.initrd else None,
                ),
                "cmdline": kernel_cmdline(layered.cmdline, len(layered.layers)),
                "disk_size_bytes": upper_bytes(hardware),
            }
        instances.check_group(group, networks)
        instance, job = instances.create_instance(
            s,
            svc.jobs,
            svc.settings.compute,
            name=name,
            vcpus=vcpus or hardware.cpus or DEFAULT_VCPUS,
            memory_mib=memory_mib or hardware.memory_mib or DEFAULT_MEMORY_MIB,
            attach=attach_nics(who, networks, svc.settings.network.default_network),
            group=group,
            who=who,
            **boot,
        )
        instance.appliance_id = row.id
        if appliance.kind != "traditional":
            instance.layers = [f.as_dict() for f in layered.layers]
            instance.variables = values
            instance.templates = list(appliance.templates)
        answer = {
            # As GET /instances/{ref} shows it: owner's name, appliance, NICs, volumes.
            "instance": usecases.describe_instance(s, svc, instance, who),
            "job": describe_job(job),
            "appliance": {"id": row.id, "name": row.name, "version": row.version},
            "variables": values,
        }
    svc.wake_jobs()
    return answer


def upper_bytes(hardware: Hardware) -> int:
    """The size of a layered instance's writable layer: its ``user`` disk, else 1 GiB."""
    for disk in hardware.disks:
        if disk.type == "user" and disk.size_mib:
            return disk.size_mib * 1024 * 1024
    return DEFAULT_UPPER_BYTES


def _disk_image(
    session: Session, who: Principal, row: InstalledAppliance, appliance: Appliance
) -> BootSource:
    """The appliance's disk image, as an instance records it."""
    if appliance.image is None or not row.images:
        raise InvalidState(f"appliance {row.name} {row.version} has no disk image to boot")
    return file_of(session, who, row, appliance, appliance.image).boot_source
