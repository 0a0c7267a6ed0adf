"""Resumable uploads: the client declares the size and SHA-256, sends the file in parts at
given offsets, can ask how much the server has, and continues after a broken connection.

Parts are appended to a staging file under ``<data_dir>/uploads/`` (a part that does not
start where the staged bytes end is refused with the offset to continue from). When the last
byte arrives the staged file is streamed once into the image's store, with both digests
computed on the way, and the image becomes ``available`` only if size and SHA-256 match.
Resumable uploads are the one place the manager keeps a file on its own disk: that is what
lets a client disconnect and come back, possibly to another manager sharing the directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from lamina.errors import Conflict, InvalidRequest, InvalidState
from lamina.images.models import Image

RESUMABLE = "resumable"


def staging_path(root: Path, image_id: str) -> Path:
    return root / f"{image_id}.part"


def received(root: Path, image_id: str) -> int:
    path = staging_path(root, image_id)
    return path.stat().st_size if path.exists() else 0


def check_open(image: Image) -> tuple[int, str]:
    """The declared (size, sha256) of an image in a resumable upload."""
    if image.status != "uploading" or image.upload_by != RESUMABLE:
        raise InvalidState(
            f"image {image.id} has no resumable upload in progress", status=image.status
        )
    assert image.upload_size is not None and image.upload_sha256 is not None
    return image.upload_size, image.upload_sha256


def append(root: Path, image_id: str, offset: int, size: int, chunks: object) -> int:
    """Write a part at ``offset`` (which must be where the staged bytes end); return the new
    number of bytes received. Never more than the declared size."""
    root.mkdir(parents=True, exist_ok=True)
    path = staging_path(root, image_id)
    have = received(root, image_id)
    if offset != have:
        raise Conflict(f"this upload continues at offset {have}, not {offset}", offset=have)
    written = have
    with path.open("ab") as out:
        for chunk in chunks:  # type: ignore[attr-defined]
            if written + len(chunk) > size:
                out.truncate(have)
                raise InvalidRequest(f"the part goes past the declared size of {size} bytes")
            out.write(chunk)
            written += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return written


def discard(root: Path, image_id: str) -> None:
    staging_path(root, image_id).unlink(missing_ok=True)
