"""What an instance boots from: the kernel, initrd and disk image its creator named, resolved
to what its host fetches.

A host's agent runs as root and copies what it is told into its cache, and the guest then
reads it (and may print it on its console), so the caller must be allowed to read whatever
they name here:

* an **image** of the repository they may read, by id or by name (the images domain's
  visibility rules): the host fetches the image's file from its store's location;
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

from lamina.errors import InvalidRequest, InvalidState, NotSupported, PathForbidden
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


#: Image locations a host's cache can fetch itself (``lamina.agent.cache.ImageCache``).
FETCHABLE = ("file", "http", "https")
LABELS = ("kernel", "initrd", "disk_image")


@dataclass(frozen=True)
class BootSource:
    """One boot file, checked: where the host fetches it from, and the image it is (if so)."""

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
    that id or name), InvalidState (an image without a file), NotSupported (an image in a
    store hosts cannot fetch from), PathForbidden (403 ``path_forbidden``: a host path from a
    member, or outside ``compute.boot_paths``), LocationUnavailable (400: a URL the fetch
    policy refuses or whose name does not resolve)."""
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


def image_source(image: Image) -> BootSource:
    """Where a host fetches ``image``'s file from: its store location. InvalidState when it
    has no file (yet); NotSupported when it is in a store hosts cannot fetch from."""
    if image.status != "available" or not image.location or not image.sha256:
        raise InvalidState(
            f"image {image.id} is {image.status}: it has no file to boot from", image=image.id
        )
    where = urllib.parse.urlsplit(image.location)
    # A location with credentials in it would show them in the instance's record.
    if where.scheme not in FETCHABLE or where.username or where.password:
        raise NotSupported(
            f"image {image.id} is in the {image.store!r} store, which hosts cannot fetch from "
            "yet (use the file or http store)",
            image=image.id,
            store=image.store,
        )
    return BootSource(image.location, image.id, image.sha256)
