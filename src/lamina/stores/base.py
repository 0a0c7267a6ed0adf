"""The interface every image store implements, and the records it returns.

A store keeps image files as objects named by a ``location`` URI it hands out (``file://``,
``s3://``, ``http(s)://``). Transfers are streams of bytes chunks, so no store ever holds a
whole image in memory.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Capabilities:
    """What a store can do, as data callers check."""

    writable: bool
    #: Serves byte ranges without reading from the start.
    ranged: bool = True


@dataclass(frozen=True)
class StoredObject:
    location: str
    size: int
    #: A checksum the store could tell without reading the file (e.g. an HTTP server's
    #: Content-MD5), or None.
    checksum: str | None = None


class ImageStore(abc.ABC):
    """A place image files live. Every method raises ``LaminaError`` subclasses on failure:
    ``NotFound`` for a missing object, ``InvalidRequest`` for a location outside the store or
    a write to a read-only store, ``BackendUnavailable`` when the backend cannot be reached."""

    name: str
    capabilities: Capabilities

    @abc.abstractmethod
    def save(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        """Write the stream as object ``key`` and return it. Atomic: the object appears only
        once the whole stream is written; if the stream or the write fails, nothing is left
        behind and the exception propagates."""

    @abc.abstractmethod
    def open(self, location: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream ``length`` bytes (all to the end if None) from ``offset``."""

    @abc.abstractmethod
    def delete(self, location: str) -> None:
        """Remove the object; a missing one is not an error."""

    @abc.abstractmethod
    def exists(self, location: str) -> bool:
        """Whether the object is there."""

    @abc.abstractmethod
    def size(self, location: str) -> int:
        """The object's size in bytes."""

    def open_local(self, location: str) -> BinaryIO | None:
        """The object as an open local file, for stores that have one (a download can then
        go out with ``sendfile``); None for the others."""
        return None

    def room(self) -> int | None:
        """The largest object a ``save`` could write now (the free space of a disk, the
        largest object the service takes), or None when the store cannot tell. Uploads
        larger than this are refused before they start."""
        return None

    def discard_partial(self, key: str) -> None:  # noqa: B027 - optional hook
        """Remove what an interrupted write of ``key`` left behind (after a crash)."""

    def probe(self, location: str) -> StoredObject:
        """Check an object given by location (registering an image already stored):
        return where it really is, its size and any checksum the backend knows."""
        return StoredObject(location, self.size(location))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
