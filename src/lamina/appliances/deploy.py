"""Deploying an installed appliance: an instance made from it.

A ``traditional`` appliance deploys as an instance booting from its disk image: the image's
place in the repository's store (``file://`` for the file store, ``http(s)://`` for the http
store) is the instance's ``disk_image``, which the host fetches into its content-addressed
cache once and puts a qcow2 overlay on (``instance.create``: ``fetch_boot_files``,
``create_disk``), so an instance disk costs the same whatever the base's size.

Everything is checked before anything is created: the variables (every unknown, missing or
wrongly typed one in one 400), the appliance's kind and state, the image's place.
Layered appliances (``substrate``, ``application``) are not deployable yet.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.appliances.definition import Appliance, Hardware
from lamina.appliances.models import InstalledAppliance
from lamina.appliances.parsing import parse_appliance
from lamina.appliances.variables import resolve_variables
from lamina.appliances.versions import Version
from lamina.compute import instances
from lamina.compute.models import Host
from lamina.errors import Conflict, InvalidState, NotFound, NotSupported
from lamina.identity.principal import Principal
from lamina.images import service as images
from lamina.jobs.views import describe_job

if TYPE_CHECKING:
    from lamina.services import Services

#: Memory and vCPUs of an instance whose appliance's ``<hardware>`` does not say.
DEFAULT_MEMORY_MIB = 256
DEFAULT_VCPUS = 1
#: Image locations a host's cache can fetch itself (``lamina.agent.cache.ImageCache``).
FETCHABLE = ("file", "http", "https")


def find_installed(session: Session, ref: str) -> InstalledAppliance:
    """An installed appliance by id, else by name (its newest installed version, else its
    newest record, which the caller finds still installing)."""
    row = session.get(InstalledAppliance, ref)
    if row is None:
        named = list(
            session.scalars(select(InstalledAppliance).where(InstalledAppliance.name == ref))
        )
        usable = [r for r in named if r.status == "installed"] or named
        if usable:
            row = max(usable, key=lambda r: Version.parse(r.version))
    if row is None:
        raise NotFound(f"appliance {ref!r} is not installed", appliance=ref)
    return row


def deploy(
    svc: Services,
    who: Principal,
    ref: str,
    *,
    name: str,
    variables: Mapping[str, str],
    memory_mib: int | None = None,
    vcpus: int | None = None,
) -> dict[str, Any]:
    """Create an instance of the installed appliance ``ref`` (id or name) owned by ``who``;
    answers the instance, its ``instance.create`` job and the resolved variables.

    Raises NotFound (not installed), InvalidState (still installing, or failed),
    Conflict (a layered appliance: not deployable yet), InvalidRequest (the variables:
    every problem named; or the instance's name, size), NotSupported (an image store hosts
    cannot fetch from), and what ``create_instance`` raises (quota, capacity, name taken)."""
    with svc.db.write() as s:
        row = find_installed(s, ref)
        if row.status != "installed":
            raise InvalidState(
                f"appliance {row.name} {row.version} is {row.status}, not installed",
                appliance=row.id,
                status=row.status,
            )
        appliance = parse_appliance(row.definition)
        if appliance.kind != "traditional":
            raise Conflict(
                f"appliance {row.name} is a {appliance.kind} appliance: deploying layered "
                "appliances is not built yet (only traditional ones deploy)",
                appliance=row.id,
                kind=appliance.kind,
            )
        values = resolve_variables(appliance, variables)
        source = _disk_image(s, who, row, appliance)
        hardware = appliance.hardware or Hardware()
        instance, job = instances.create_instance(
            s,
            svc.jobs,
            svc.settings.compute,
            name=name,
            vcpus=vcpus or hardware.cpus or DEFAULT_VCPUS,
            memory_mib=memory_mib or hardware.memory_mib or DEFAULT_MEMORY_MIB,
            disk_image=source,
            who=who,
        )
        answer = {
            "instance": instances.describe(instance, s.get(Host, instance.host_id)),
            "job": describe_job(job),
            "appliance": {"id": row.id, "name": row.name, "version": row.version},
            "variables": values,
        }
    svc.wake_jobs()
    return answer


def _disk_image(
    session: Session, who: Principal, row: InstalledAppliance, appliance: Appliance
) -> str:
    """Where a host fetches the appliance's disk image from: its store location."""
    if appliance.image is None or not row.images:
        raise InvalidState(f"appliance {row.name} {row.version} has no disk image to boot")
    # ``row.images`` follows ``Appliance.blobs()``: a traditional appliance's image is last
    # but kernel and initrd, which it does not have.
    image = images.get_image(session, row.images[appliance.blobs().index(appliance.image)], who)
    if image.status != "available" or not image.location:
        raise InvalidState(
            f"image {image.id} of appliance {row.name} is {image.status}", image=image.id
        )
    where = urllib.parse.urlsplit(image.location)
    # A location with credentials in it would show them in the instance's ``disk_image``.
    if where.scheme not in FETCHABLE or where.username or where.password:
        raise NotSupported(
            f"image {image.id} is in the {image.store!r} store, which hosts cannot fetch from "
            "yet (use the file or http store)",
            image=image.id,
            store=image.store,
        )
    return image.location
