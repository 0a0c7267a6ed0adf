"""``lamina image`` and the client's image calls against a running manager (VISOR's CLI,
tables 4.10 and 4.11, and its programming API, table 4.9)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from harness import Cloud

from lamina.errors import Conflict, InvalidState

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024


def make_file(path: Path, mib: int, seed: int, extra: int = 0) -> str:
    """A file of ``mib`` MiB (+ ``extra`` bytes) of pseudo-random data; its SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for n in range(mib + (1 if extra else 0)):
            block = rng.randbytes(MIB if n < mib else extra)
            out.write(block)
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def as_json(cloud: Cloud, *args: str) -> Any:
    return json.loads(cloud.cli("--json", *args).stdout)


def test_images_from_the_command_line(cloud: Cloud, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk_sha = make_file(disk, 5, seed=1, extra=4321)
    iso = tmp_path / "rescue.iso"
    make_file(iso, 1, seed=2)

    added = as_json(
        cloud,
        "image",
        "add",
        "name=Debian 12",
        "architecture=x86_64",
        "format=qcow2",
        "os=debian",
        "--file",
        str(disk),
    )
    assert added["status"] == "available" and added["sha256"] == disk_sha
    assert added["size"] == 5 * MIB + 4321 and added["os"] == "debian"
    debian = added["id"]
    shown = cloud.cli(
        "image", "add", "name=rescue", "architecture=i386", "format=iso", "-f", str(iso)
    )
    assert "available" in shown.stdout
    locked = as_json(cloud, "image", "add", "name=later", "format=raw")
    assert locked["status"] == "locked"

    # brief / detail, --query, --sort, --dir
    lines = cloud.cli("image", "brief").stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "ARCHITECTURE"] and len(lines) == 4
    isos = as_json(cloud, "image", "brief", "--query", "format=iso")
    assert [i["name"] for i in isos] == ["rescue"]
    by_extra = as_json(cloud, "image", "brief", "-q", "os=debian&architecture=x86_64")
    assert [i["id"] for i in by_extra] == [debian]
    ordered = as_json(
        cloud, "image", "brief", "--sort", "size", "--dir", "desc", "-q", "status=available"
    )
    assert [i["name"] for i in ordered] == ["Debian 12", "rescue"]
    ordered = as_json(cloud, "image", "brief", "-s", "name", "-d", "asc")
    assert [i["name"] for i in ordered] == ["Debian 12", "later", "rescue"]
    detail = cloud.cli("image", "detail", "--query", "architecture=x86_64").stdout
    assert disk_sha in detail and "rescue" not in detail
    assert cloud.cli("image", "brief", "-q", "format=vmdk").stdout == "(none)\n"
    bad = cloud.cli("image", "brief", "--sort", "colour", check=False)
    # The CLI checks the attribute itself, listing those it may be.
    assert bad.returncode == 2 and "'colour' is not one of 'name', 'architecture'" in bad.stderr

    # head
    head = cloud.cli("image", "head", debian).stdout
    assert "sha256" in head and disk_sha in head and "Debian 12" in head
    head_json = as_json(cloud, "image", "head", debian)
    assert head_json["size"] == 5 * MIB + 4321 and head_json["os"] == "debian"

    # get --save DIR, then again (VISOR's 409), then --continue after truncating
    saves = tmp_path / "saves"
    saves.mkdir()
    got = cloud.cli("image", "get", debian, "--save", str(saves)).stdout
    saved = saves / f"{debian}.qcow2"
    assert f"saved to {saved}" in got and sha256_of(saved) == disk_sha
    again = cloud.cli("image", "get", debian, "--save", str(saves), check=False)
    assert again.returncode == 1
    assert again.stderr.startswith(f"error: image file already downloaded to {saved}")
    assert "--continue" in again.stderr and again.stderr.count("\n") == 1
    with saved.open("r+b") as f:
        f.truncate(2 * MIB + 77)
    cloud.cli("image", "get", debian, "--save", str(saved), "--continue")
    assert sha256_of(saved) == disk_sha
    complete = as_json(cloud, "image", "get", debian, "--save", str(saved), "-c")
    assert complete["path"] == str(saved) and complete["image"]["sha256"] == disk_sha
    assert sha256_of(saved) == disk_sha
    not_yet = cloud.cli("image", "get", locked["id"], "--save", str(saves), check=False)
    assert not_yet.returncode == 1 and "has no file" in not_yet.stderr

    # update: metadata; a file for the locked image; none for an available one (409)
    updated = as_json(cloud, "image", "update", debian, "name=Debian 12.5", "os_version=12.5")
    assert updated["name"] == "Debian 12.5" and updated["os_version"] == "12.5"
    raw = tmp_path / "later.raw"
    raw_sha = make_file(raw, 2, seed=3)
    filled = as_json(cloud, "image", "update", locked["id"], "--file", str(raw))
    assert filled["status"] == "available"
    assert filled["sha256"] == raw_sha
    refused = cloud.cli("image", "update", debian, "--file", str(raw), check=False)
    assert refused.returncode == 1 and "available" in refused.stderr
    assert refused.stderr.startswith("error: cannot assign a file")
    nothing = cloud.cli("image", "update", debian, check=False)
    assert nothing.returncode == 2 and "nothing to update" in nothing.stderr
    malformed = cloud.cli("image", "add", "name", check=False)
    assert malformed.returncode == 2 and "is not key=value" in malformed.stderr

    history = cloud.cli("image", "history", debian).stdout
    for action in ("register", "upload-start", "upload", "update"):
        assert action in history

    # delete by id, then by --query
    assert cloud.cli("image", "delete", debian).stdout == f"deleted {debian} (Debian 12.5)\n"
    by_query = cloud.cli("image", "delete", "--query", "format=iso&name=rescue").stdout
    assert by_query.startswith("deleted ") and "(rescue)" in by_query
    left = as_json(cloud, "image", "brief")
    assert [i["name"] for i in left] == ["later"]
    gone = cloud.cli("image", "head", debian, check=False)
    assert gone.returncode == 1 and gone.stderr == f"error: image '{debian}' does not exist\n"
    everything = cloud.cli("image", "delete", "--query", "", check=False)
    assert everything.returncode == 2


def test_client_streams_with_flat_memory(cloud: Cloud, tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    big_sha = make_file(big, 64, seed=4)
    seen: list[tuple[int, int | None]] = []
    with cloud.client() as client:
        tracemalloc.start()
        meta = client.add_image(
            {"name": "big", "format": "raw"}, big, progress=lambda d, t: seen.append((d, t))
        )
        upload_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert meta["sha256"] == big_sha and meta["size"] == 64 * MIB
        assert seen[0] == (0, 64 * MIB) and seen[-1] == (64 * MIB, 64 * MIB)

        out = tmp_path / "out.raw"
        tracemalloc.start()
        got = client.get_image(meta["id"], out)
        download_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert got["sha256"] == big_sha and sha256_of(out) == big_sha
        assert download_peak < 16 * MIB, f"download peak {download_peak / MIB:.1f} MiB"
        assert upload_peak < 16 * MIB, f"upload peak {upload_peak / MIB:.1f} MiB"

        with pytest.raises(Conflict, match="already downloaded"):
            client.get_image(meta["id"], out)
        os.truncate(out, 10 * MIB + 1)
        client.get_image(meta["id"], out, resume=True)
        assert sha256_of(out) == big_sha

        # A partial file that is not this image's start is caught and removed.
        with out.open("r+b") as f:
            f.write(b"not the image")
        os.truncate(out, 3 * MIB)
        with pytest.raises(Exception, match="arrived with SHA-256") as caught:
            client.get_image(meta["id"], out, resume=True)
        assert type(caught.value).__name__ == "ChecksumMismatch" and not out.exists()

        with pytest.raises(InvalidState):
            client.update_image(meta["id"], file=big)
        listed = client.images(detail=True, format="raw")
        assert [i["id"] for i in listed] == [meta["id"]]
        assert client.images(limit=1)[0]["id"] == meta["id"]
        assert client.delete_image(meta["id"])["sha256"] == big_sha
