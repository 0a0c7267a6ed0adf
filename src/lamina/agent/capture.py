"""Capturing an instance layer: the ``data`` folder of a guest's ext4 instance disk (the
overlay's upper directory) made into a read-only layer image in the host's cache.

The disk is checked (``e2fsck -p``: a guest forced off leaves a journal to replay) and
mounted read-only through a loop device (the guest is stopped, so nothing writes it). The
layer is made with the same tools and flags as ``lamina channel build`` except that extended
attributes are kept: overlayfs marks opaque folders with them, and
files deleted inside the instance are whiteouts (character devices 0:0) that the layer keeps,
so the deletions carry over too.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from lamina.agent.cache import ImageCache
from lamina.commands import run
from lamina.errors import InvalidRequest, InvalidState
from lamina.wire.protocol import CacheEntry

#: Seconds ``e2fsck``, ``mount`` or ``umount`` may take (a disk of several GiB to check).
COMMAND_TIMEOUT = 600.0
#: Seconds making the layer image may take.
LAYER_TIMEOUT = 1800.0


def capture_layer(disk: Path, exclude: Sequence[str], fmt: str, cache: ImageCache) -> CacheEntry:
    """The layer image of ``disk``'s ``data`` folder less ``exclude``, stored in ``cache``."""
    relative = [_relative(p) for p in exclude]
    with tempfile.TemporaryDirectory(prefix=".capture-", dir=cache.root) as scratch:
        work = Path(scratch)
        mountpoint = work / "mnt"
        mountpoint.mkdir()
        image = work / "layer"
        with _mounted(disk, mountpoint):
            upper = mountpoint / "data"
            if not upper.is_dir():
                raise InvalidState("the instance layer is empty: the instance never booted")
            run(_layer_argv(fmt, upper, image, relative), LAYER_TIMEOUT)
        return cache.adopt(image)


def _layer_argv(fmt: str, source: Path, image: Path, exclude: list[str]) -> list[str]:
    if fmt == "squashfs":
        argv = ["mksquashfs", str(source), str(image), "-noappend", "-reproducible"]
        argv += ["-mkfs-time", "0", "-all-time", "0", "-no-progress", "-quiet"]
        for path in exclude:
            argv += ["-e", path]
        return argv
    if fmt == "erofs":
        argv = ["mkfs.erofs", "-T0", "-U", "00000000-0000-0000-0000-000000000000"]
        argv += [f"--exclude-path={path}" for path in exclude]
        return [*argv, str(image), str(source)]
    raise InvalidRequest(f"unknown layer format {fmt!r}")


def _relative(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidRequest(f"excluded path {path!r} must name something inside the root")
    return "/".join(parts)


@contextlib.contextmanager
def _mounted(disk: Path, mountpoint: Path) -> Iterator[None]:
    if not disk.is_file():
        raise InvalidState(f"{disk.name} does not exist: the instance has no instance layer")
    # A guest forced off leaves its journal to replay: e2fsck replays it (and fixes what a
    # crash may leave) so the capture sees everything the guest wrote. Exit 1 means "fixed".
    run(["e2fsck", "-p", str(disk)], COMMAND_TIMEOUT, ok=(0, 1))
    # The guest wrote this filesystem: nothing on it is run, opened as a device or setuid.
    options = "ro,loop,noload,nosuid,nodev,noexec"
    run(["mount", "-t", "ext4", "-o", options, str(disk), str(mountpoint)], COMMAND_TIMEOUT)
    try:
        yield
    finally:
        run(["umount", "-d", str(mountpoint)], COMMAND_TIMEOUT)
