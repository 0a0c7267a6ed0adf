"""Whether a file is the filesystem image a layer says it is, by its superblock's magic
number: squashfs (``hsqs`` at byte 0) or erofs (0xE0F5E1E2, little-endian, at byte 1024).

Checked where a layer enters Lamina (``channel build`` of a prebuilt layer, ``appliance
install`` after the file's signature and digest are verified), so a layer the guest's
initramfs could not mount is refused before anything is installed or booted.
"""

from __future__ import annotations

from pathlib import Path

from lamina.errors import InvalidRequest

#: format -> (offset, magic bytes)
MAGIC = {
    "squashfs": (0, b"hsqs"),
    "erofs": (1024, (0xE0F5E1E2).to_bytes(4, "little")),
}


def check_layer(path: Path, fmt: str | None, what: str) -> None:
    """Raise InvalidRequest, naming ``what``, unless ``path`` starts like a ``fmt`` image."""
    if fmt not in MAGIC:
        raise InvalidRequest(f"{what}: unknown layer format {fmt!r} (squashfs or erofs)")
    offset, magic = MAGIC[fmt]
    with path.open("rb") as f:
        f.seek(offset)
        found = f.read(len(magic))
    if found != magic:
        raise InvalidRequest(
            f"{what} is not a {fmt} filesystem image (no {fmt} superblock at byte {offset})"
        )
