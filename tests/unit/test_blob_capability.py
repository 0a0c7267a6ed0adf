"""Blob capabilities and what a host is asked to install (``lamina.compute.fetch``), in
process on a real database and file store; the route and a real agent's download are in
tests/integration/test_blob_fetch.py."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import bare_services

from lamina.agent.cache import DownloadTracker, FetchConfig, ImageCache
from lamina.agent.enrol import remember_manager
from lamina.compute.boot import image_ref, parse_image_ref
from lamina.compute.fetch import bearer, check_capability, host_source, mint, serve_blob
from lamina.compute.models import Host
from lamina.errors import (
    AuthenticationFailed,
    InvalidRequest,
    InvalidState,
    NotFound,
    RangeNotSatisfiable,
)
from lamina.identity.secretbox import SecretBox
from lamina.images.models import Image

DIGEST = "a" * 64
OTHER = "b" * 64
HOST = "3c2b7d1e-0000-4000-8000-000000000001"


@pytest.fixture
def box(tmp_path: Path) -> SecretBox:
    return SecretBox(tmp_path)


def _refused(box: SecretBox, capability: str | None, digest: str = DIGEST) -> str:
    with pytest.raises(AuthenticationFailed) as refused:
        check_capability(box, capability, digest)
    assert refused.value.status == 403
    return refused.value.code


def test_a_capability_names_its_host_for_its_digest_only(box: SecretBox, tmp_path: Path) -> None:
    good = mint(box, HOST, DIGEST)
    assert check_capability(box, good, DIGEST) == HOST
    assert _refused(box, None) == "auth_missing"
    assert _refused(box, "") == "auth_missing"
    # Another digest, another host named in it, a flipped MAC, another cloud's key.
    assert _refused(box, good, OTHER) == "auth_bad_token"
    version, host, expires, mac = good.split(".")
    other_host = HOST.replace("1", "2")
    assert _refused(box, f"{version}.{other_host}.{expires}.{mac}") == "auth_bad_token"
    assert _refused(box, f"{version}.{host}.{int(expires) + 60}.{mac}") == "auth_bad_token"
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    assert _refused(box, f"{version}.{host}.{expires}.{flipped}") == "auth_bad_token"
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    assert _refused(SecretBox(elsewhere), good) == "auth_bad_token"
    # Expired; malformed in every way.
    assert _refused(box, mint(box, HOST, DIGEST, seconds=-1)) == "auth_bad_token"
    for bad in ("v1", "v2." + good[3:], "v1.a.b.c", f"v1.{HOST}.x.{mac}", good + ".x"):
        assert _refused(box, bad) == "auth_bad_token", bad
    assert check_capability(box, good, DIGEST, now=int(expires)) == HOST


def test_bearer_reads_only_bearer_tokens() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("LAMINA key:sig") is None
    assert bearer(None) is None
    assert bearer("Bearer ") is None


def test_image_refs() -> None:
    ref = image_ref("img-1", DIGEST)
    assert ref == f"image:img-1@sha256:{DIGEST}"
    assert parse_image_ref(ref) == ("img-1", DIGEST)
    for other in ("file:///x", "image:img-1", f"image:@sha256:{DIGEST}", "image:x@sha256:ab"):
        assert parse_image_ref(other) is None


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    services = bare_services(tmp_path, monkeypatch)
    yield services
    services.close()


def _stored(svc: Any, data: bytes, host_status: str = "up") -> tuple[str, str, str]:
    """An available image of ``data`` in the file store and a host: (image id, digest,
    location)."""
    store = svc.stores["file"]
    digest = hashlib.sha256(data).hexdigest()
    stored = store.save(digest, iter([data]))
    with svc.db.write() as s:
        image = Image(
            name="k", status="available", store="file", location=stored.location,
            size=len(data), sha256=digest,
        )  # fmt: skip
        s.add(image)
        s.add(Host(id=HOST, name="h1", address="127.0.0.1:1", status=host_status))
        s.flush()
        return image.id, digest, stored.location


def test_host_source_turns_the_repositorys_files_into_blobs(svc: Any) -> None:
    image_id, digest, location = _stored(svc, b"kernel" * 1000)
    with svc.db.read() as s:
        source, sha, cap = host_source(s, svc.box, HOST, image_ref(image_id, digest), None)
        assert (source, sha) == (f"blob:{digest}", digest)
        assert cap is not None and check_capability(svc.box, cap, digest) == HOST
        # A row written before instances recorded references: its store location, with or
        # without the digest a layer carries.
        for known in (None, digest):
            source, sha, cap = host_source(s, svc.box, HOST, location, known)
            assert (source, sha) == (f"blob:{digest}", digest) and cap
        # An administrator's host path and a user's URL go as they are, with no capability.
        assert host_source(s, svc.box, HOST, "/srv/boot/vmlinuz", None) == (
            "/srv/boot/vmlinuz", None, None,
        )  # fmt: skip
        assert host_source(s, svc.box, HOST, "https://example.org/k", None)[2] is None
        # An image whose file is gone is a clear error, before any host is asked.
        with pytest.raises(InvalidState):
            host_source(s, svc.box, HOST, image_ref(image_id, OTHER), None)


def test_serve_blob_checks_the_capability_then_answers_ranges(svc: Any) -> None:
    data = bytes(range(256)) * 40
    _, digest, _ = _stored(svc, data)
    cap = mint(svc.box, HOST, digest)
    whole = serve_blob(svc, cap, digest, None)
    assert (whole.size, whole.offset, whole.length, whole.partial) == (
        len(data),
        0,
        len(data),
        False,
    )
    assert b"".join(whole.chunks()) == data
    part = serve_blob(svc, cap, digest, "bytes=100-")
    assert (part.offset, part.length, part.partial) == (100, len(data) - 100, True)
    assert b"".join(part.chunks()) == data[100:]
    with pytest.raises(RangeNotSatisfiable):
        serve_blob(svc, cap, digest, f"bytes={len(data)}-")
    with pytest.raises(AuthenticationFailed):
        serve_blob(svc, mint(svc.box, HOST, OTHER), digest, None)
    with pytest.raises(NotFound):
        serve_blob(svc, mint(svc.box, HOST, OTHER), OTHER, None)
    # A host that is gone (or not enrolled yet) fetches nothing, capability or not.
    with pytest.raises(AuthenticationFailed):
        serve_blob(svc, mint(svc.box, HOST.replace("1", "9"), digest), digest, None)
    with svc.db.write() as s:
        s.get(Host, HOST).status = "pending"
    with pytest.raises(AuthenticationFailed):
        serve_blob(svc, cap, digest, None)


def test_the_agent_remembers_the_manager_it_enrolled_with(tmp_path: Path) -> None:
    default = "http://127.0.0.1:8775"
    assert remember_manager(tmp_path, None, default) == default
    assert remember_manager(tmp_path, "https://10.0.0.1:8775/", default) == "https://10.0.0.1:8775"
    # Started again without --manager: the recorded one, not the settings' default.
    assert remember_manager(tmp_path, None, default) == "https://10.0.0.1:8775"
    assert (tmp_path / "manager.url").stat().st_mode & 0o077 == 0


def test_a_blob_source_needs_its_capability_and_a_manager(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c", DownloadTracker(), FetchConfig())
    with pytest.raises(InvalidRequest):
        cache.install(f"blob:{DIGEST}", DIGEST)  # no capability
    with pytest.raises(InvalidRequest):
        cache.install(f"blob:{DIGEST}", OTHER, "cap")  # another digest
    with pytest.raises(InvalidRequest):
        cache.install("blob:../../etc/passwd", None, "cap")
    with pytest.raises(InvalidState, match="--manager"):
        cache.install(f"blob:{DIGEST}", DIGEST, "cap")
    assert list(cache.root.iterdir()) == []


def test_downloads_left_behind_are_dropped_at_start(tmp_path: Path) -> None:
    root = tmp_path / "c"
    ImageCache(root, DownloadTracker())
    fresh, old = root / f".blob-{DIGEST}", root / f".blob-{OTHER}"
    copy = root / ".partial-123-456"
    for path in (fresh, old, copy):
        path.write_bytes(b"part")
    os.utime(old, (1, 1))
    ImageCache(root, DownloadTracker())
    assert sorted(p.name for p in root.iterdir()) == [fresh.name]
