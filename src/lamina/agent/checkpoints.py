"""Checkpoints on a host: a guest's memory and disks saved together into the cache, and a
guest restored from such files.

Saving pauses the guest only while its memory is written and its disks are copied (each
disk to a compact qcow2 beside the memory file: an instance layer of a few GiB that holds a
few MiB copies in a blink), then it goes on. The files are adopted into the cache by digest,
from where the manager streams them into the image repository.

Restoring writes each disk back (raw, sparse) from the cached copies the manager had the
host fetch, and has the hypervisor restore the saved memory with this host's paths.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from lamina.agent.cache import ImageCache
from lamina.agent.disks import DiskStore
from lamina.agent.drivers.base import DiskSpec, GuestSpec, GuestTags, Hypervisor, NicSpec
from lamina.commands import run
from lamina.errors import InvalidRequest, NotFound
from lamina.wire.protocol import (
    CheckpointFiles,
    GuestCheckpoint,
    GuestDefinition,
    SavedRequirements,
)

#: Seconds copying one disk may take (while the guest is paused: it should take far less).
COPY_TIMEOUT = 600.0


def copy_argv(source: Path, source_format: str, target: Path, target_format: str) -> list[str]:
    """``qemu-img convert`` of a guest's disk (``-U``: the guest's QEMU holds it open, paused)
    into a file of ``target_format``, skipping what is zero."""
    return [
        "qemu-img", "convert", "-U", "-f", source_format, "-O", target_format,
        str(source), str(target),
    ]  # fmt: skip


def save_guest(
    hypervisor: Hypervisor, disks: DiskStore, cache: ImageCache, name: str, req: GuestCheckpoint
) -> CheckpointFiles:
    """Save guest ``name``'s memory and copy its disks ``req.disks`` while it is paused; the
    files go into ``cache``. NotFound for a disk it does not have."""
    sources = {}
    for disk in req.disks:
        path = disks.disk_path(name, disk)
        if not path.is_file():
            raise NotFound(f"disk {disk!r} of guest {name!r} does not exist")
        sources[disk] = (path, disks.info(name, disk).format)
    with tempfile.TemporaryDirectory(prefix=".checkpoint-", dir=cache.root) as scratch:
        work = Path(scratch)
        memory = work / "memory"
        copies = {disk: work / f"{disk}.qcow2" for disk in sources}

        def copy_disks() -> None:
            for disk, (path, fmt) in sources.items():
                run(copy_argv(path, fmt, copies[disk], "qcow2"), COPY_TIMEOUT)

        saved = hypervisor.checkpoint(name, memory, copy_disks)
        memory_entry = cache.adopt(memory)
        disk_entries = {disk: cache.adopt(copy) for disk, copy in copies.items()}
    return CheckpointFiles(
        memory=memory_entry,
        disks=disk_entries,
        requires=SavedRequirements(
            domain_type=saved.domain_type,
            qemu_version=saved.qemu_version,
            machine=saved.machine,
            cpu_mode=saved.cpu_mode,
            cpu_model=saved.cpu_model,
            arch=saved.arch,
            vcpus=saved.vcpus,
            memory_mib=saved.memory_mib,
        ),
        paused_seconds=saved.paused_seconds,
    )


def write_disks(disks: DiskStore, cache: ImageCache, name: str, copies: dict[str, str]) -> None:
    """Each disk of guest ``name`` (name -> the digest of its cached qcow2 copy) written back
    as the raw file the guest uses, replacing what was there."""
    folder = disks.guest_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    for disk, digest in copies.items():
        source = Path(cache.check(digest).path)
        target = disks.disk_path(name, disk)
        partial = target.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        run(copy_argv(source, "qcow2", partial, "raw"), COPY_TIMEOUT)
        partial.rename(target)


def restore_spec(
    name: str,
    definition: GuestDefinition,
    disks: DiskStore,
    cache: ImageCache,
    nics: tuple[NicSpec, ...],
    deployment: str | None,
) -> GuestSpec:
    """The spec of the guest to restore, with this host's paths: what ``Agent.define``
    builds from a definition (disks targeted vda, vdb, ... in order)."""
    specs = []
    for i, disk in enumerate(definition.disks):
        target = f"vd{chr(ord('a') + i)}"
        if disk.layer:
            path = Path(cache.check(disk.layer).path)
            specs.append(DiskSpec(str(path), target, "raw", True, disk.serial))
            continue
        path = disks.disk_path(name, disk.name)
        if not path.is_file():
            raise InvalidRequest(f"disk {disk.name!r} of {name!r} was not restored")
        specs.append(DiskSpec(str(path), target, disk.format, disk.readonly, disk.serial))
    kernel = str(cache.check(definition.kernel).path) if definition.kernel else None
    initrd = str(cache.check(definition.initrd).path) if definition.initrd else None
    return GuestSpec(
        name=name,
        vcpus=definition.vcpus,
        memory_mib=definition.memory_mib,
        kernel=kernel,
        initrd=initrd,
        cmdline=definition.cmdline,
        disks=tuple(specs),
        nics=nics,
        console_log=str(disks.guest_dir(name) / "console.log"),
        tags=GuestTags(
            deployment=deployment,
            instance=name.removeprefix("lamina-") if name.startswith("lamina-") else None,
            created=time.time(),
        ),
    )
