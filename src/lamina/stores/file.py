"""The ``file`` store: objects are files under one root directory.

A write goes to a hidden temporary file in the root, is flushed and fsynced, and is renamed
into place only when complete, so a reader never sees part of an image. Every location is
resolved and must stay inside the root.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from lamina.errors import Conflict, InvalidRequest, NotFound
from lamina.stores.base import CHUNK, Capabilities, ImageStore, StoredObject
from lamina.stores.writeback import start_writeback

KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
#: A write starts the disk on what it has written every this many bytes, so the final fsync
#: finds little left to do (and the page cache never holds a whole image dirty).
WRITEBACK_BYTES = 16 * 1024 * 1024


class FileImageStore(ImageStore):
    name = "file"
    capabilities = Capabilities(writable=True, ranged=True)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, location: str) -> Path:
        parsed = urllib.parse.urlsplit(location)
        if parsed.scheme != "file":
            raise InvalidRequest(f"{location!r} is not a location of the file store")
        path = Path(urllib.parse.unquote(parsed.path)).resolve()
        if path.parent != self.root:
            raise InvalidRequest(f"{location!r} is outside the file store's root {self.root}")
        return path

    def location_of(self, key: str) -> str:
        if not KEY.match(key):
            raise InvalidRequest(f"bad object name {key!r}")
        return (self.root / key).as_uri()

    def save(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        location = self.location_of(key)
        final = self._path(location)
        if final.exists():
            raise Conflict(f"the file store already holds {key!r}")
        tmp = self.root / f".partial-{key}-{os.getpid()}"
        size = flushed = 0
        try:
            with tmp.open("wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                    if size - flushed >= WRITEBACK_BYTES:
                        out.flush()
                        start_writeback(out.fileno(), flushed, size - flushed)
                        flushed = size
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.root)
        finally:
            tmp.unlink(missing_ok=True)
        return StoredObject(location, size)

    def open(self, location: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        f = self.open_local(location)
        assert isinstance(f, io.BufferedReader)
        return _read(f, offset, length)

    def open_local(self, location: str) -> BinaryIO:
        try:
            return self._path(location).open("rb")
        except FileNotFoundError:
            raise NotFound(f"image file {location} is missing from the file store") from None

    def delete(self, location: str) -> None:
        self._path(location).unlink(missing_ok=True)

    def exists(self, location: str) -> bool:
        return self._path(location).is_file()

    def size(self, location: str) -> int:
        try:
            return self._path(location).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"image file {location} is missing from the file store") from None

    def room(self) -> int:
        """The free space of the root's file system."""
        return shutil.disk_usage(self.root).free

    def discard_partial(self, key: str) -> None:
        for leftover in self.root.glob(f".partial-{key}-*"):
            leftover.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(f: io.BufferedReader, offset: int, length: int | None) -> Iterator[bytes]:
    with f:
        f.seek(offset)
        left = length
        while left is None or left > 0:
            data = f.read(CHUNK if left is None else min(CHUNK, left))
            if not data:
                return
            if left is not None:
                left -= len(data)
            yield data
