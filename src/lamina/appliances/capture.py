"""Capturing an instance: the configuration an administrator made inside a stopped layered
instance (its writable instance layer, less runtime noise) becomes a read-only *deployment
layer*, and a new installed appliance deploys with it.

The new appliance is the instance's appliance with one more layer on top: same substrate
requirement, variables and templates, its own name and version. What is left out of the
layer (``CAPTURE_FILTER``, plus the appliance's rendered template files, which each new
instance renders afresh from its own variables) is documented in ``docs/appliances.md``.

The ``appliance.capture`` job:

1. ``capture``: the host makes the layer (``guest_capture``: squashfs of the ext4 disk's
   ``data`` folder) into its cache, content-addressed.
2. ``store``: the manager streams it from the host into the image repository as a
   ``type=layer`` image, unless an available image has that digest already. Undo removes it.
3. ``activate``: the appliance's definition gets the layer's digest and size, and it
   becomes ``installed``.

A failure removes the appliance record and the image the job made: nothing half-captured.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from lamina.appliances.install import (
    _available,
    _downloads,
    _store,
    describe,
    forget_appliances,
    remove_new_images,
)
from lamina.appliances.models import InstalledAppliance
from lamina.channels.feed import FileRef
from lamina.compute import instances
from lamina.compute.models import Host, Instance
from lamina.db.types import new_id, utcnow
from lamina.errors import Conflict, InvalidRequest, InvalidState, NotFound
from lamina.formats.definition import Appliance, Blob, Requirement
from lamina.formats.parsing import parse_appliance
from lamina.formats.versions import Version, VersionRange
from lamina.formats.writing import write_appliance
from lamina.identity.accounts import require_admin
from lamina.identity.principal import Principal
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.jobs.service import submit
from lamina.jobs.views import describe_job
from lamina.wire.protocol import GuestCapture

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)
KIND = "appliance.capture"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Left out of every captured layer: logs, caches, temporary and runtime files, and what
#: Lamina keeps per instance (the config disk's copy, boot counter, first-boot marker, the
#: resolver its network's DHCP gave it).
CAPTURE_FILTER = (
    "/var/log",
    "/var/cache",
    "/var/tmp",
    "/tmp",
    "/run",
    "/var/run",
    "/etc/lamina",
    "/var/lib/lamina",
    "/etc/resolv.conf",
    "/root/.ash_history",
    "/root/.bash_history",
)


def start_capture(
    svc: Services, who: Principal, instance_ref: str, name: str, version: str | None
) -> dict[str, Any]:
    """Record the new appliance ``installing`` and submit the job. InvalidRequest for a bad
    name or version; Conflict for a traditional instance or a name and version installed
    already; InvalidState unless the instance is stopped. Administrators only."""
    require_admin(who)
    if not NAME.match(name):
        raise InvalidRequest(
            f"appliance name {name!r} must be 1-64 lower-case letters, digits, '.', '_' or '-'"
        )
    release = Version.parse(version or "1.0.0")
    with svc.db.write() as s:
        instance = instances.get_instance(s, instance_ref, who, "own")
        parent_row = s.get(InstalledAppliance, instance.appliance_id or "")
        if instance.layers is None or parent_row is None:
            raise Conflict(
                f"instance {instance.name} is not a layered appliance instance; only those "
                "capture (a traditional instance's disk is an image already)",
                instance=instance.id,
            )
        if instance.status != "stopped":
            raise InvalidState(
                f"instance {instance.name} is {instance.status}: stop it before capturing",
                instance=instance.id,
                status=instance.status,
            )
        taken = select(InstalledAppliance.id).where(
            InstalledAppliance.name == name, InstalledAppliance.version == str(release)
        )
        if s.scalar(taken):
            raise Conflict(f"appliance {name} {release} exists already", appliance=name)
        parent = parse_appliance(parent_row.definition)
        captured = _derived(parent, parent_row, name, release)
        row_id = new_id()
        params = {
            "owner": who.user_id,
            "access_key": who.access_key,
            "instance_id": instance.id,
            "appliance_id": row_id,
            "parent_id": parent_row.id,
            "exclude": [*CAPTURE_FILTER, *parent.templates],
        }
        job = submit(
            s,
            svc.jobs.get(KIND),
            params,
            target_type="appliance",
            target_id=row_id,
            target_name=name,
            owner=who.user_id,
        )
        row = InstalledAppliance(
            id=row_id,
            name=name,
            version=str(release),
            kind="application",
            channel_id=None,
            definition=write_appliance(captured),
            status="installing",
            images=[],
            job_id=job.id,
            created_at=utcnow(),
        )
        s.add(row)
        try:
            s.flush()
        except IntegrityError:
            raise Conflict(f"appliance {name} {release} exists already", appliance=name) from None
        answer = {"job": describe_job(job), "appliance": describe(row)}
    svc.wake_jobs()
    return answer


def _derived(
    parent: Appliance, parent_row: InstalledAppliance, name: str, release: Version
) -> Appliance:
    """The captured appliance before its layer exists: the parent's layers (a substrate's
    become its requirement: this version or newer) and a placeholder for the new one."""
    substrate: Requirement | None
    if parent.kind == "substrate":
        substrate = Requirement(parent.name, VersionRange.parse(f">={parent.version}"))
        layers: tuple[Blob, ...] = ()
    else:
        substrate, layers = parent.substrate, parent.layers
    return dataclasses.replace(
        parent,
        name=name,
        label=f"{parent.label} ({name})",
        version=release,
        kind="application",
        description=f"{parent_row.name} {parent_row.version} with a captured deployment layer",
        substrate=substrate,
        layers=(*layers, Blob(role="layer", format="squashfs", sha256="0" * 64, size=0)),
        kernel=None,
        initrd=None,
        image=None,
        cmdline=None,
        url=None,
        sig=None,
    )


def _who(ctx: StepContext) -> Principal:
    return Principal(ctx.params["owner"], ctx.params["access_key"], "admin")


def capture_layer(ctx: StepContext) -> None:
    svc: Services = ctx.services
    with svc.db.read() as s:
        instance = s.get(Instance, ctx.params["instance_id"])
        if instance is None:
            raise NotFound(f"instance {ctx.params['instance_id']} vanished")
        host = s.get(Host, instance.host_id)
        if host is None:
            raise NotFound(f"the host of instance {instance.name} vanished")
        guest = instance.domain_name
    agent = svc.agents.for_host(host)
    entry = agent.capture(guest, GuestCapture(exclude=ctx.params["exclude"]))
    ctx.state.update(sha256=entry.sha256, size=entry.size, host_id=host.id)
    ctx.report(fraction=0.5)


def store_layer(ctx: StepContext) -> None:
    svc: Services = ctx.services
    digest, size = ctx.state["sha256"], ctx.state["size"]
    with svc.db.read() as s:
        existing = _available(s, digest)
        host = s.get(Host, ctx.state["host_id"])
    if existing is None:
        if host is None:
            raise NotFound("the host of the captured layer vanished")
        part = _downloads(svc) / f"{ctx.job_id}-{digest}.part"
        with part.open("wb") as sink:
            got = svc.agents.for_host(host).cache_read(digest, sink)
        if got != size:
            raise InvalidState(f"the host sent {got} bytes of the layer, not {size}")
        ref = FileRef(
            role="layer", sha256=digest, size=size, signature="", urls=(), format="squashfs"
        )
        existing = _store(ctx, ref, part)
        part.unlink(missing_ok=True)
    ctx.state["image"] = existing
    ctx.report(fraction=0.9)


def activate(ctx: StepContext) -> None:
    svc: Services = ctx.services
    with svc.db.write() as s:
        row = s.get(InstalledAppliance, ctx.params["appliance_id"])
        parent = s.get(InstalledAppliance, ctx.params["parent_id"])
        if row is None or parent is None:
            raise NotFound("the captured appliance or its parent vanished during the capture")
        appliance = parse_appliance(row.definition)
        layer = Blob(
            role="layer", format="squashfs", sha256=ctx.state["sha256"], size=ctx.state["size"]
        )
        appliance = dataclasses.replace(appliance, layers=(*appliance.layers[:-1], layer))
        own = parse_appliance(parent.definition)
        inherited = [] if own.kind == "substrate" else parent.images[: len(own.layers)]
        row.definition = write_appliance(appliance)
        row.images = [*inherited, ctx.state["image"]]
        row.status = "installed"
    ctx.report(fraction=1.0)
    log.info("captured %s as appliance %s", ctx.params["instance_id"], ctx.params["appliance_id"])


def register_capture_jobs(registry: JobRegistry) -> None:
    registry.register(
        JobKind(
            KIND,
            (
                Step("capture", capture_layer, timeout=1800),
                Step("store", store_layer, remove_new_images, timeout=3600),
                Step("activate", activate),
            ),
            deadline=3 * 3600,
            on_failure=forget_appliances,
        )
    )
