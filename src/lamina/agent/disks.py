"""Guest disks: files under ``<agent>/guests/<guest>/``, made with qemu-img."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from lamina.agent.wire import DiskCreate, DiskInfo
from lamina.errors import CommandFailed, InvalidRequest, NotFound


def qemu_img_create(path: Path, fmt: str, size: int | None, backing: Path | None) -> list[str]:
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-b", str(backing), "-F", _image_format(backing)]
    argv.append(str(path))
    if size is not None:
        argv.append(str(size))
    return argv


def run(argv: list[str], timeout: float = 120) -> str:
    """Run a command (never through a shell); raise CommandFailed on a non-zero exit."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stderr)
    return result.stdout


def _image_format(path: Path) -> str:
    info = json.loads(run(["qemu-img", "info", "--output=json", str(path)]))
    return str(info["format"])


class DiskStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def guest_dir(self, guest: str) -> Path:
        path = (self.root / guest).resolve()
        if path.parent != self.root.resolve():
            raise InvalidRequest(f"bad guest name {guest!r}")
        return path

    def disk_path(self, guest: str, name: str) -> Path:
        return self.guest_dir(guest) / f"{name}.img"

    def create(self, req: DiskCreate, backing: Path | None) -> DiskInfo:
        if req.size_bytes is None and backing is None:
            raise InvalidRequest("a disk needs a size, a backing image, or both")
        if backing is not None and req.format != "qcow2":
            raise InvalidRequest("only qcow2 disks can have a backing image")
        path = self.disk_path(req.guest, req.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # idempotent: a step run again after a crash finds it done
            tmp = path.with_suffix(".partial")
            run(qemu_img_create(tmp, req.format, req.size_bytes, backing))
            tmp.rename(path)
        return self.info(req.guest, req.name)

    def info(self, guest: str, name: str) -> DiskInfo:
        path = self.disk_path(guest, name)
        if not path.is_file():
            raise NotFound(f"disk {name!r} of guest {guest!r} does not exist")
        info = json.loads(run(["qemu-img", "info", "--output=json", "-U", str(path)]))
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
