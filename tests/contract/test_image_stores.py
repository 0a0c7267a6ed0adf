"""The contract every writable image store passes: the file store, and the s3 store against a
real S3-compatible server (Swift with s3api, started once per session by ``s3_server``)."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from swift import Swift

from lamina.errors import BackendUnavailable, Conflict, InvalidRequest, NotFound
from lamina.stores.base import CHUNK, ImageStore
from lamina.stores.file import FileImageStore
from lamina.stores.s3 import PART, S3ImageStore

MiB = 1024 * 1024


@dataclass
class Subject:
    store: ImageStore
    #: Whatever a failed write could have left behind (partial files, multipart uploads).
    leftovers: Callable[[], list[Any]]
    #: Locations that are not this store's to touch.
    foreign: list[str]
    #: Where the store would put a key.
    location_of: Callable[[str], str]


def _file_subject(tmp_path: Path) -> Iterator[Subject]:
    store = FileImageStore(tmp_path / "images")
    yield Subject(
        store,
        leftovers=lambda: sorted(p.name for p in store.root.iterdir()),
        foreign=[
            "file:///etc/passwd",
            f"{store.root.as_uri()}/../secret",
            f"{store.root.as_uri()}/sub/../../secret",
            "s3://images/images/x",
        ],
        location_of=store.location_of,
    )


def _s3_subject(server: Swift) -> Iterator[Subject]:
    bucket = f"lamina-{uuid.uuid4().hex[:12]}"
    store = S3ImageStore(
        server.endpoint_url, bucket, server.access_key, server.secret_key, region=server.region
    )
    client: Any = server.client()

    def leftovers() -> list[Any]:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return [u["Key"] for u in uploads] + [o["Key"] for o in objects]

    yield Subject(
        store,
        leftovers=leftovers,
        foreign=[
            f"s3://another-bucket/images/{'x' * 8}",
            f"s3://{bucket}/elsewhere/x",
            f"s3://{bucket}/images/../x",
            f"s3://{bucket}/images/a/b",
            "file:///etc/passwd",
        ],
        location_of=store.location_of,
    )
    store.close()
    client.close()


# The s3 store needs a Swift server: it is ``integration`` (``make check`` runs the file store).
@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    if request.param == "file":
        yield from _file_subject(tmp_path)
    else:
        yield from _s3_subject(request.getfixturevalue("s3_server"))


@pytest.fixture
def store(subject: Subject) -> ImageStore:
    return subject.store


def pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read(chunks: Iterable[bytes]) -> bytes:
    return b"".join(chunks)


# Random data over two parts and not a multiple of CHUNK or PART.
DATA_SIZE = 2 * PART + CHUNK // 2 + 12345
DATA = os.urandom(DATA_SIZE)


@pytest.fixture
def saved(store: ImageStore) -> str:
    return store.save("big", pieces(DATA)).location


def test_save_then_open_returns_the_same_bytes(store: ImageStore) -> None:
    assert DATA_SIZE % CHUNK and DATA_SIZE % PART
    obj = store.save("img-1", pieces(DATA))
    assert obj.size == DATA_SIZE
    back = list(store.open(obj.location))
    assert all(len(c) <= CHUNK for c in back)
    assert hashlib.sha256(b"".join(back)).digest() == hashlib.sha256(DATA).digest()


@pytest.mark.parametrize("size", [0, 1, 1000, PART - 1, PART, PART + 1])
def test_sizes_around_one_part(store: ImageStore, size: int) -> None:
    data = DATA[:size]
    obj = store.save(f"s{size}", pieces(data, 3 * MiB))
    assert (obj.size, store.size(obj.location)) == (size, size)
    assert read(store.open(obj.location)) == data


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, None),
        (12345, None),  # offset only
        (CHUNK - 1, 3 * CHUNK + 7),  # offset and length across chunks
        (PART - 10, 20),  # across a part boundary
        (DATA_SIZE - 100, 100),  # a range at the end
        (DATA_SIZE - 100, 1000),  # a range past the end is cut short
        (DATA_SIZE, None),  # at the end: nothing
        (DATA_SIZE + 10, None),  # past the end: nothing
        (5, 0),  # zero length
    ],
)
def test_ranged_reads(store: ImageStore, saved: str, offset: int, length: int | None) -> None:
    end = None if length is None else offset + length
    assert read(store.open(saved, offset, length)) == DATA[offset:end]


def test_exists_and_size(store: ImageStore, saved: str) -> None:
    assert store.exists(saved)
    assert store.size(saved) == DATA_SIZE
    other = saved.replace("big", "other")
    assert not store.exists(other)
    with pytest.raises(NotFound):
        store.size(other)


def test_delete(store: ImageStore, saved: str) -> None:
    store.delete(saved)
    assert not store.exists(saved)
    with pytest.raises(NotFound):
        store.open(saved)
    with pytest.raises(NotFound):
        store.open(saved, 0, 0)
    store.delete(saved)  # missing: fine


def test_saving_an_existing_key_is_a_conflict(store: ImageStore, saved: str) -> None:
    with pytest.raises(Conflict):
        store.save("big", [b"other"])
    assert read(store.open(saved, 0, 10)) == DATA[:10]


@pytest.mark.parametrize("fail_after", [0, 3 * MiB, 2 * PART + 5])
def test_a_failing_stream_leaves_nothing(subject: Subject, fail_after: int) -> None:
    store = subject.store
    location = subject.location_of("broken")
    seen: list[bool] = []

    def stream() -> Iterator[bytes]:
        yield from pieces(DATA[:fail_after], MiB)
        seen.append(store.exists(location))  # not visible while being written
        raise OSError("client went away")

    with pytest.raises(OSError, match="client went away"):
        store.save("broken", stream())
    assert seen == [False]
    assert not store.exists(location)
    with pytest.raises(NotFound):
        store.open(location)
    assert subject.leftovers() == []


def test_foreign_locations_are_refused(subject: Subject) -> None:
    store = subject.store
    for location in subject.foreign:
        for call in (store.open, store.delete, store.exists, store.size):
            with pytest.raises(InvalidRequest):
                call(location)


@pytest.mark.parametrize("key", ["", "../x", "a/b", ".hidden", "x" * 300])
def test_bad_keys_are_refused(store: ImageStore, key: str) -> None:
    with pytest.raises(InvalidRequest):
        store.save(key, [b"data"])


# -- s3 only ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_save_runs_in_constant_memory(s3_server: Swift) -> None:
    """200 MiB generated on the fly: Python's peak stays a few parts, not the image."""
    store = _s3_store(s3_server)
    block = os.urandom(CHUNK)
    total = 200 * MiB
    digest = hashlib.sha256()

    def generate() -> Iterator[bytes]:
        for i in range(total // CHUNK):
            chunk = block[i % 251 :] + block[: i % 251]  # a fresh chunk each time
            digest.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        obj = store.save("huge", generate())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert obj.size == total
    assert peak < 48 * MiB, f"peak {peak / MiB:.1f} MiB"
    back = hashlib.sha256()
    for chunk in store.open(obj.location):
        back.update(chunk)
    assert back.digest() == digest.digest()
    store.close()


@pytest.mark.integration
def test_s3_unreachable_endpoint_is_backend_unavailable(s3_server: Swift) -> None:
    from harness import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3ImageStore(endpoint, "lamina-x", "key", "very-secret-value")
    with pytest.raises(BackendUnavailable) as caught:
        store.save("x", [b"data"])
    assert endpoint in caught.value.message
    assert "very-secret-value" not in caught.value.message
    with pytest.raises(BackendUnavailable):
        store.exists("s3://lamina-x/images/x")


@pytest.mark.integration
def test_s3_access_denied_names_the_bucket(s3_server: Swift) -> None:
    store = S3ImageStore(
        s3_server.endpoint_url, "lamina-denied", s3_server.access_key, "wrong-secret"
    )
    with pytest.raises(BackendUnavailable, match="lamina-denied") as caught:
        store.save("x", [b"data"])
    assert "wrong-secret" not in caught.value.message


def _s3_store(server: Swift) -> S3ImageStore:
    return S3ImageStore(
        server.endpoint_url,
        f"lamina-{uuid.uuid4().hex[:12]}",
        server.access_key,
        server.secret_key,
    )
