"""What an instance boots from: the kernel, initrd and disk image its creator named, resolved
to what its host fetches.

A host's agent runs as root and copies what it is told into its cache, and the guest then
reads it (and may print it on its console), so the caller must be allowed to read whatever
they name here:

* an **image** of the repository they may read, by id or by name (the images domain's
  visibility rules): the instance records the image's id and digest (``image_ref``), and
  the host fetches the file through the manager (``lamina.compute.fetch``), whatever store
  holds it;
* an ``http(s)://`` URL, under the fetch policy of image locations
  (``images.http_allow_private``, ``lamina.fetchpolicy``): checked here after DNS, and again
  by the host when it connects;
* a **host path** (absolute, or ``file://``): administrators only, and only inside the folders
  of ``compute.boot_paths`` (empty by default: no host paths at all). Members are refused
  whatever the path, without looking at it.

The host's agent checks paths again against its own ``agent.fetch_roots``, whoever asks.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from lamina.errors import InvalidRequest, InvalidState, PathForbidden
from lamina.fetchpolicy import (
    FetchPolicy,
    check_path,
    check_reachable,
    is_local,
    local_path,
)
from lamina.identity.principal import Principal
from lamina.images import service as images

if TYPE_CHECKING:
    from lamina.config import Settings
    from lamina.images.models import Image

#: How a layered guest finds its disks: by virtio serial number, named on its kernel command
#: line (``lamina.appliances.layered.kernel_cmdline``): its read-only layers ``l0``, ``l1``, ...
#: lowest first, then its instance layer and its config disk.
UPPER = "upper"
CONFIG = "config"


def layer_serial(index: int) -> str:
    return f"l{index}"


LABELS = ("kernel", "initrd", "disk_image")


@dataclass(frozen=True)
class BootSource:
    """One boot file, checked: where the host fetches it from, and the image it is (if so)."""

    #: What the instance records: ``image:<id>@sha256:<digest>`` for an image, else the
    #: host path or URL.
    location: str
    image: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class BootSources:
    kernel: BootSource | None = None
    initrd: BootSource | None = None
    disk_image: BootSource | None = None


def check_boot(kernel: object, initrd: object, disk_image: object) -> None:
    """InvalidRequest, naming the fields, unless there is a kernel or a disk image to boot
    from and any initrd goes with a kernel."""
    if not kernel and not disk_image:
        raise InvalidRequest(
            "an instance boots from a kernel (with an initrd) or a disk image",
            fields=[
                {"field": "kernel", "message": "give a kernel or a disk image"},
                {"field": "disk_image", "message": "give a kernel or a disk image"},
            ],
        )
    if initrd and not kernel:
        raise InvalidRequest(
            "an initrd needs a kernel",
            fields=[
                {"field": "initrd", "message": "needs a kernel"},
                {"field": "kernel", "message": "missing, but an initrd is given"},
            ],
        )


def resolve_boot(
    session: Session,
    who: Principal,
    settings: Settings,
    *,
    kernel: str | None = None,
    initrd: str | None = None,
    disk_image: str | None = None,
) -> BootSources:
    """The boot files ``who`` named, each checked and resolved (see the module's doc).

    Raises InvalidRequest (a missing kernel or disk image, an initrd without a kernel, a
    malformed value, several images of that name), NotFound (no image ``who`` may read by
    that id or name), InvalidState (an image without a file), PathForbidden (403
    ``path_forbidden``: a host path from a member, or outside ``compute.boot_paths``),
    LocationUnavailable (400: a URL the fetch policy refuses or whose name does not
    resolve)."""
    check_boot(kernel, initrd, disk_image)
    found = {
        label: _resolve(session, who, settings, label, value)
        for label, value in zip(LABELS, (kernel, initrd, disk_image), strict=True)
        if value
    }
    return BootSources(**found)


def _resolve(
    session: Session, who: Principal, settings: Settings, label: str, value: str
) -> BootSource:
    if not value.isprintable() or value != value.strip():
        raise InvalidRequest(f"{label} has control characters or surrounding spaces")
    if is_local(value):
        return BootSource(_host_path(who, settings.compute.boot_paths, label, value))
    scheme = urllib.parse.urlsplit(value).scheme.lower() if "://" in value else ""
    if scheme in ("http", "https"):
        policy = FetchPolicy(allow_private=settings.images.http_allow_private)
        try:
            check_reachable(value, policy)
        except InvalidRequest as exc:
            exc.message = f"{label}: {exc.message}"
            raise
        return BootSource(value)
    if scheme:
        raise InvalidRequest(
            f"{label} must be an image (its id or name) or an http(s):// URL", label=label
        )
    return image_source(images.get_image(session, value, who))


def _host_path(who: Principal, boot_paths: tuple[Path, ...], label: str, value: str) -> str:
    if not who.is_admin:
        raise PathForbidden(
            f"{label}: only administrators may boot from host paths; boot from an image "
            "(its id or name) or an http(s):// URL"
        )
    if not boot_paths:
        raise PathForbidden(
            f"{label}: booting from host paths is off (compute.boot_paths lists no folder); "
            "boot from an image, or list the folders in compute.boot_paths"
        )
    path = local_path(value)
    if path is None or not path.is_absolute():
        raise InvalidRequest(f"{label} must be an absolute path or a file:// URL")
    try:
        check_path(path, boot_paths)
    except PathForbidden:
        raise PathForbidden(
            f"{label}: {path} is not a file inside the folders of compute.boot_paths"
        ) from None
    return value


IMAGE_REF = "image:"


def image_ref(image_id: str, digest: str) -> str:
    """What an instance records for a file of the repository: the image and its digest."""
    return f"{IMAGE_REF}{image_id}@sha256:{digest}"


def parse_image_ref(value: str) -> tuple[str, str] | None:
    """``(image id, sha256)`` of an ``image_ref``, None for anything else."""
    if not value.startswith(IMAGE_REF):
        return None
    image_id, sep, digest = value[len(IMAGE_REF) :].partition("@sha256:")
    if not sep or not image_id or len(digest) != 64:
        return None
    return image_id, digest


def image_source(image: Image) -> BootSource:
    """What an instance records to boot ``image``'s file: its id and digest (hosts fetch it
    through the manager, from whichever store holds it). InvalidState when it has no file
    (yet)."""
    if image.status != "available" or not image.location or not image.sha256:
        raise InvalidState(
            f"image {image.id} is {image.status}: it has no file to boot from", image=image.id
        )
    return BootSource(image_ref(image.id, image.sha256), image.id, image.sha256)
