"""Guest disks: files under ``<agent>/guests/<guest>/``, made with qemu-img, ``mkfs.ext4``
(an empty instance layer) or as a tar archive (a config disk)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path

from lamina.commands import run
from lamina.errors import InvalidRequest, NotFound
from lamina.wire.protocol import DiskCreate, DiskInfo

#: Formats a cached image may have to be a guest disk's base: ones whose every byte is in
#: the file itself (see ``base_format``).
BASE_FORMATS = ("raw", "qcow2")

#: Seconds ``qemu-img create`` or ``mkfs.ext4`` may take.
COMMAND_TIMEOUT = 120.0


def qemu_img_create(
    path: Path, fmt: str, size: int | None, backing: Path | None, backing_format: str = "raw"
) -> list[str]:
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-b", str(backing), "-F", backing_format]
    argv.append(str(path))
    if size is not None:
        argv.append(str(size))
    return argv


def base_format(path: Path) -> str:
    """The format of ``path``, a cached image some user supplied, if it may be a guest
    disk's base: raw, or qcow2 without a backing file or an external data file. Anything
    else (a qcow2 naming a backing file, a VMDK with extents, ...) would have QEMU, running
    as root, open other files of the host for the guest to read: ``InvalidRequest``."""
    info = json.loads(run(["qemu-img", "info", "--output=json", str(path)], COMMAND_TIMEOUT))
    fmt = str(info.get("format"))
    specific = info.get("format-specific") or {}
    data = specific.get("data") or {} if isinstance(specific, dict) else {}
    outside = bool(
        "backing-filename" in info or "full-backing-filename" in info or data.get("data-file")
    )
    if fmt not in BASE_FORMATS or outside:
        named = " naming other files (a backing or data file)" if outside else ""
        raise InvalidRequest(
            f"the disk image is {fmt}{named}: a disk image must be a self-contained raw or "
            "qcow2 file"
        )
    return fmt


def mkfs_argv(path: Path) -> list[str]:
    """An empty ext4 filesystem on a raw file, quickly: the inode tables and journal are
    zeroed lazily, so creating it writes a few MiB whatever the size."""
    return [
        "mkfs.ext4", "-q", "-F", "-L", "lamina-upper",
        "-E", "lazy_itable_init=1,lazy_journal_init=1", str(path),
    ]  # fmt: skip


def write_tar_disk(path: Path, files: Mapping[str, str]) -> None:
    """A raw disk whose bytes are a ustar archive of ``files`` (name -> text), padded to
    whole sectors: the guest reads it with ``tar -x -f /dev/vdX``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in sorted(files.items()):
            if "/" in name or name in ("", ".", ".."):
                raise InvalidRequest(f"config file name {name!r} must be a plain name")
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    data += b"\0" * (-len(data) % 65536)
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _check_request(req: DiskCreate, backing: Path | None) -> None:
    if req.files is not None:
        if backing is not None or req.filesystem or req.size_bytes is not None:
            raise InvalidRequest("a config disk (files) has no size, backing or filesystem")
        if req.format != "raw":
            raise InvalidRequest("a config disk (files) is raw")
        return
    if req.size_bytes is None and backing is None:
        raise InvalidRequest("a disk needs a size, a backing image, or both")
    if backing is not None and req.format != "qcow2":
        raise InvalidRequest("only qcow2 disks can have a backing image")
    if req.filesystem and (req.format != "raw" or backing is not None or not req.size_bytes):
        raise InvalidRequest("a disk with a filesystem is raw, sized and has no backing image")


class DiskStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Guests' disks, config disks (with their configuration-service tokens) and console
        # logs are theirs and root's: no other user of the host may even list them.
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)

    def guest_dir(self, guest: str) -> Path:
        path = (self.root / guest).resolve()
        if path.parent != self.root.resolve():
            raise InvalidRequest(f"bad guest name {guest!r}")
        return path

    def disk_path(self, guest: str, name: str) -> Path:
        return self.guest_dir(guest) / f"{name}.img"

    def create(self, req: DiskCreate, backing: Path | None) -> DiskInfo:
        _check_request(req, backing)
        path = self.disk_path(req.guest, req.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # idempotent: a step run again after a crash finds it done
            tmp = path.with_suffix(".partial")
            if req.files is not None:
                write_tar_disk(tmp, req.files)
            else:
                base = base_format(backing) if backing is not None else "raw"
                argv = qemu_img_create(tmp, req.format, req.size_bytes, backing, base)
                run(argv, COMMAND_TIMEOUT)
                if req.filesystem:
                    run(mkfs_argv(tmp), COMMAND_TIMEOUT)
            tmp.rename(path)
        return self.info(req.guest, req.name)

    def info(self, guest: str, name: str) -> DiskInfo:
        path = self.disk_path(guest, name)
        if not path.is_file():
            raise NotFound(f"disk {name!r} of guest {guest!r} does not exist")
        argv = ["qemu-img", "info", "--output=json", "-U", str(path)]
        info = json.loads(run(argv, COMMAND_TIMEOUT))
        return DiskInfo(
            guest=guest,
            name=name,
            path=str(path),
            format=info["format"],
            size_bytes=int(info["virtual-size"]),
        )

    def remove(self, guest: str, name: str) -> None:
        self.disk_path(guest, name).unlink(missing_ok=True)

    def remove_guest(self, guest: str) -> None:
        shutil.rmtree(self.guest_dir(guest), ignore_errors=True)

    def used_bytes(self) -> int:
        return sum(p.stat().st_blocks * 512 for p in self.root.rglob("*") if p.is_file())
