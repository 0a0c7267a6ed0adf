"""``lamina channel build`` with the real ``mksquashfs``, served by real static HTTP servers
(``python -m http.server`` on 127.0.0.1), fetched and verified as a subscriber would: two
mirrors, the first down or serving corrupted bytes, and files tampered with everywhere."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import free_port, wait_until

from lamina.channels.build import build_channel
from lamina.channels.feed import Feed, FileRef
from lamina.channels.mirrors import MirrorsFailed
from lamina.channels.signing import (
    VerificationFailed,
    generate_key,
    load_private_key,
    parse_public_key,
)
from lamina.channels.verify import fetch_verified, verify_definition, verify_feed
from lamina.errors import Conflict, InvalidRequest
from lamina.fetchpolicy import FetchPolicy, http_client

pytestmark = pytest.mark.integration

SUBSTRATE = """<appliance version="1.0" name="tiny-os" kind="substrate">
  <label>Tiny OS</label>
  <version>12.5</version>
  <layers><layer format="squashfs" source="rootfs"/></layers>
  <boot><kernel source="boot/vmlinuz"/><initrd source="boot/initrd.img"/></boot>
</appliance>
"""

APPLICATION = """<appliance version="1.0" name="{name}" kind="application">
  <label>{name}</label>
  <version>1.0.0-0</version>
  <substrate name="tiny-os" version="&gt;=12,&lt;13"/>
  <layers>
    <layer format="squashfs" source="shared"/>
    <layer format="{own}" source="layer"/>
  </layers>
  <variables><variable name="domain" type="hostname" required="true"/></variables>
  <templates><template path="/etc/{name}.conf"/></templates>
</appliance>
"""

TRADITIONAL = """<appliance version="1.0">
  <label>Legacy</label>
  <version>2</version>
  <provides>legacy</provides>
  <image format="raw" source="disk.raw"/>
</appliance>
"""


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A substrate, two applications sharing a library layer (their own layers one squashfs,
    one erofs), and a traditional appliance."""
    root = tmp_path / "appliances"
    _write(root / "tiny-os" / "appliance.xml", SUBSTRATE)
    _write(root / "tiny-os" / "rootfs" / "etc" / "os-release", "NAME=tiny\n")
    _write(root / "tiny-os" / "rootfs" / "bin" / "sh", os.urandom(50_000))
    _write(root / "tiny-os" / "boot" / "vmlinuz", os.urandom(3000))
    _write(root / "tiny-os" / "boot" / "initrd.img", os.urandom(2000))
    for name, own in (("webserv", "squashfs"), ("mailserv", "erofs")):
        _write(root / name / "appliance.xml", APPLICATION.format(name=name, own=own))
        _write(root / name / "shared" / "usr" / "lib" / "libshared.so", b"the same library\n")
        _write(root / name / "layer" / "etc" / f"{name}.conf", f"{name} for {{{{ domain }}}}\n")
    _write(root / "legacy" / "appliance.xml", TRADITIONAL)
    _write(root / "legacy" / "disk.raw", os.urandom(1 << 20))
    return root


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "channel.key"
    generate_key(path)
    return path


class StaticServer:
    """``python -m http.server`` serving one folder on 127.0.0.1 (it ignores ``Range``)."""

    def __init__(self, root: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: httpx.get(self.url, timeout=1).status_code == 200, 15, "http.server")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Mirrors:
    """Two mirror addresses, chosen before the channel is built, served on demand."""

    def __init__(self) -> None:
        self.ports = [free_port(), free_port()]
        self.urls = [f"http://127.0.0.1:{port}/" for port in self.ports]
        self.servers: list[StaticServer] = []

    def serve(self, index: int, root: Path) -> None:
        self.servers.append(StaticServer(root, self.ports[index]))


@pytest.fixture
def mirrors() -> Iterator[Mirrors]:
    two = Mirrors()
    yield two
    for server in two.servers:
        server.stop()


@pytest.fixture
def channel(source: Path, key: Path, tmp_path: Path, mirrors: Mirrors) -> Path:
    out = tmp_path / "out"
    build_channel(source, out, load_private_key(key), mirrors.urls)
    return out


def _corrupt_copy(out: Path, tmp_path: Path) -> Path:
    """A copy of the channel whose every file has one byte changed (signatures intact)."""
    copy = tmp_path / "corrupt"
    shutil.copytree(out, copy)
    for path in (copy / "files").iterdir():
        if not path.name.endswith(".sig"):
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
    return copy


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina", *args], capture_output=True, text=True, timeout=300
    )


def _subscribe(feed_url: str, pinned: str) -> Feed:
    data = httpx.get(feed_url).raise_for_status().content
    signature = httpx.get(feed_url + ".sig").raise_for_status().text
    return verify_feed(parse_public_key(pinned), data, signature, feed_url)


def _fetch(pinned: str, ref: FileRef, into: Path) -> str | None:
    # The channel's mirrors are the test's own, on loopback: allowed explicitly, as
    # channels.allow_private allows them for a manager.
    with http_client(FetchPolicy(allow_private=True)) as client, into.open("w+b") as sink:
        return fetch_verified(parse_public_key(pinned), ref, sink, client=client).url


def _unsquash(image: Path, path: str) -> bytes:
    return subprocess.run(
        ["unsquashfs", "-cat", str(image), path], capture_output=True, check=True
    ).stdout


def test_the_cli_builds_a_channel_and_a_rebuild_gives_the_same_bytes(
    source: Path, tmp_path: Path
) -> None:
    keyfile = tmp_path / "cli.key"
    made = _cli("channel", "keygen", str(keyfile))
    assert made.returncode == 0, made.stderr
    assert "ed25519:" in made.stdout
    out = tmp_path / "out"
    built = _cli(
        "channel", "build", str(source), "--out", str(out), "--key", str(keyfile),
        "--base-url", "http://a.example/", "--base-url", "http://b.example/mirror",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    for name in ("tiny-os", "webserv", "mailserv", "legacy"):
        assert name in built.stdout
    files = sorted(p.name for p in (out / "files").iterdir())
    # Content-addressed: the shared library layer of webserv and mailserv is stored once:
    # 4 definitions + substrate (layer, kernel, initrd) + 1 shared + 2 own layers + 1 image.
    assert len([f for f in files if not f.endswith(".sig")]) == 11
    assert all(f"{f}.sig" in files for f in files if not f.endswith(".sig"))
    feed_text = (out / "channel.rss").read_text()
    assert "http://b.example/mirror/files/" in feed_text

    for path in source.rglob("*"):  # times and owners do not reach the images
        os.utime(path, (1_000_000, 1_000_000))
    again = tmp_path / "again"
    bases = ["http://a.example/", "http://b.example/mirror"]
    build_channel(source, again, load_private_key(keyfile), bases)
    assert (again / "channel.rss").read_bytes() == (out / "channel.rss").read_bytes()
    assert sorted(p.name for p in (again / "files").iterdir()) == files

    bad = _cli("channel", "keygen", str(keyfile))
    assert bad.returncode == 1 and "never overwritten" in bad.stderr


def _install(feed: Feed, pinned: str, name: str, into: Path) -> list[tuple[Path, str | None]]:
    """Fetch and verify one appliance as an install would: definition, then each file."""
    item = feed.find(name)
    definition = into / f"{name}.xml"
    fetched = [(definition, _fetch(pinned, item.definition, definition))]
    appliance = verify_definition(parse_public_key(pinned), item, definition.read_bytes())
    for blob, ref in zip(appliance.blobs(), item.files, strict=True):
        target = into / f"{blob.sha256}.{blob.format or blob.role}"
        fetched.append((target, _fetch(pinned, ref, target)))
    return fetched


def test_a_subscriber_installs_from_the_second_mirror_when_the_first_is_down(
    channel: Path, mirrors: Mirrors, tmp_path: Path
) -> None:
    mirrors.serve(1, channel)  # the first mirror's port has no server
    pinned = (channel / "channel.pub").read_text()
    feed = _subscribe(mirrors.urls[1] + "channel.rss", pinned)
    assert [i.name for i in feed.items] == ["legacy", "mailserv", "tiny-os", "webserv"]

    fetched = _install(feed, pinned, "webserv", tmp_path)
    assert {url.split("files/")[0] if url else None for _, url in fetched} == {mirrors.urls[1]}
    (_, _), (shared, _), (own, _) = fetched
    assert _unsquash(shared, "usr/lib/libshared.so") == b"the same library\n"
    assert _unsquash(own, "etc/webserv.conf") == b"webserv for {{ domain }}\n"
    substrate = _install(feed, pinned, "tiny-os", tmp_path)
    assert _unsquash(substrate[1][0], "etc/os-release") == b"NAME=tiny\n"


def test_a_mirror_serving_corrupted_bytes_is_skipped(
    channel: Path, mirrors: Mirrors, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirrors.serve(0, _corrupt_copy(channel, tmp_path))
    mirrors.serve(1, channel)
    pinned = (channel / "channel.pub").read_text()
    feed = _subscribe(mirrors.urls[0] + "channel.rss", pinned)
    with caplog.at_level(logging.WARNING, logger="lamina.channels.mirrors"):
        fetched = _install(feed, pinned, "legacy", tmp_path)
    assert all(url is not None and url.startswith(mirrors.urls[1]) for _, url in fetched)
    image = fetched[1][0]
    assert image.read_bytes() == (tmp_path / "appliances" / "legacy" / "disk.raw").read_bytes()
    assert f"mirror {mirrors.urls[0]}files/" in caplog.text and "wrong content" in caplog.text


def test_a_download_resumes_against_a_real_server(channel: Path, mirrors: Mirrors) -> None:
    mirrors.serve(0, channel)
    pinned = (channel / "channel.pub").read_text()
    ref = _subscribe(mirrors.urls[0] + "channel.rss", pinned).find("legacy").files[0]
    whole = (channel / "files" / ref.sha256).read_bytes()
    sink = io.BytesIO(whole[:300_000])
    with http_client(FetchPolicy(allow_private=True)) as client:
        fetched = fetch_verified(parse_public_key(pinned), ref, sink, start=300_000, client=client)
    assert sink.getvalue() == whole
    assert fetched.downloaded == len(whole)  # http.server ignores Range: all of it again


def test_tampered_files_are_refused_everywhere(
    channel: Path, mirrors: Mirrors, tmp_path: Path
) -> None:
    corrupt = _corrupt_copy(channel, tmp_path)
    mirrors.serve(0, corrupt)
    mirrors.serve(1, corrupt)
    pinned = (channel / "channel.pub").read_text()
    feed = _subscribe(mirrors.urls[0] + "channel.rss", pinned)  # the feed itself is intact
    with pytest.raises(MirrorsFailed) as info:
        _install(feed, pinned, "webserv", tmp_path)
    assert [url for url, _ in info.value.failures] == [
        u + f"files/{feed.find('webserv').definition.sha256}" for u in mirrors.urls
    ]
    assert all(reason.startswith("wrong content: sha256 is ") for _, reason in info.value.failures)

    # The definition's bytes, tampered with, are refused even when handed over directly.
    item = feed.find("webserv")
    tampered = (corrupt / "files" / item.definition.sha256).read_bytes()
    with pytest.raises(VerificationFailed, match="tampered or corrupted"):
        verify_definition(parse_public_key(pinned), item, tampered)

    # A feed changed on the server fails its signature.
    feed_path = corrupt / "channel.rss"
    feed_path.write_text(feed_path.read_text().replace("Tiny OS", "Tiny 0S"))
    with pytest.raises(VerificationFailed, match="channel feed"):
        _subscribe(mirrors.urls[0] + "channel.rss", pinned)
    # And a key other than the pinned one is refused.
    other = tmp_path / "other.key"
    generate_key(other)
    with pytest.raises(VerificationFailed, match="signature is not the channel key's"):
        _subscribe(mirrors.urls[1] + "channel.rss", (tmp_path / "other.key.pub").read_text())


# -- refused sources --------------------------------------------------------------------------


def test_a_template_must_be_in_a_layer_and_use_declared_variables(
    source: Path, key: Path, tmp_path: Path
) -> None:
    conf = source / "webserv" / "layer" / "etc" / "webserv.conf"
    conf.write_text("{{ domain }} {{ colour }}\n")
    with pytest.raises(InvalidRequest, match="webserv.conf uses undeclared variable.s. colour"):
        build_channel(source, tmp_path / "out", load_private_key(key))
    conf.unlink()
    with pytest.raises(InvalidRequest, match="template /etc/webserv.conf is in none of the layers"):
        build_channel(source, tmp_path / "out", load_private_key(key))


def test_sources_must_stay_in_the_appliance_folder(source: Path, key: Path, tmp_path: Path) -> None:
    shutil.rmtree(source / "webserv" / "layer")
    (source / "webserv" / "layer").symlink_to("/etc")
    with pytest.raises(InvalidRequest, match="not a file or directory inside the appliance"):
        build_channel(source, tmp_path / "out", load_private_key(key))


def test_only_layers_are_built_from_directories(source: Path, key: Path, tmp_path: Path) -> None:
    kernel = source / "tiny-os" / "boot" / "vmlinuz"
    kernel.unlink()
    kernel.mkdir()
    with pytest.raises(InvalidRequest, match="the kernel source 'boot/vmlinuz' is a directory"):
        build_channel(source, tmp_path / "out", load_private_key(key))


def test_a_prebuilt_layer_must_be_a_filesystem_image(
    source: Path, key: Path, tmp_path: Path
) -> None:
    layer = source / "webserv" / "layer"
    shutil.rmtree(layer)
    layer.write_bytes(b"#!/bin/sh\necho not a filesystem\n" * 100)
    with pytest.raises(InvalidRequest, match="layer layer is not a .* filesystem image"):
        build_channel(source, tmp_path / "out", load_private_key(key))
    assert not (tmp_path / "out" / "channel.rss").exists()
    # The same bytes after a real image's superblock pass: the check is the magic number.
    subprocess.run(["mksquashfs", str(source / "tiny-os" / "rootfs"), str(layer), "-noappend",
                    "-quiet", "-no-progress"], check=True)  # fmt: skip
    build_channel(source, tmp_path / "out", load_private_key(key))


def test_an_appliance_version_is_built_once(source: Path, key: Path, tmp_path: Path) -> None:
    shutil.copytree(source / "legacy", source / "legacy-copy")
    with pytest.raises(Conflict, match="legacy 2 is defined twice"):
        build_channel(source, tmp_path / "out", load_private_key(key))
