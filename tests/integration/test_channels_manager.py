"""The manager's side of channels, end to end: a real manager (``lamina serve``) subscribes
to a channel built by ``build_channel`` and served by ``python -m http.server`` on loopback,
whose request log tells what the manager fetched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from harness import Cloud, free_port, wait_until

from lamina.channels.build import build_channel
from lamina.channels.feed import parse_feed
from lamina.channels.signing import generate_key, load_private_key, public_key_text

pytestmark = pytest.mark.integration

SUBSTRATE = """<appliance version="1.0" name="tiny-os" kind="substrate">
  <label>Tiny OS</label>
  <version>12.5</version>
  <layers><layer format="squashfs" source="rootfs.img"/></layers>
  <boot><kernel source="vmlinuz"/><initrd source="initrd.img"/></boot>
</appliance>
"""

APPLICATION = """<appliance version="1.0" name="{name}" kind="application">
  <label>{name}</label>
  <version>1.0.0-0</version>
  {dependency}
  <substrate name="tiny-os" version="&gt;=12,&lt;13"/>
  <layers>
    <layer format="squashfs" source="shared.img"/>
    <layer format="squashfs" source="own.img"/>
  </layers>
</appliance>
"""
#: Layers are squashfs images by their magic number (``lamina.formats.layerfs``); these
#: tests move bytes, so the rest is random. Real layers boot in test_layered_appliances.
SQUASHFS = b"hsqs"
SHARED = SQUASHFS + os.urandom(40_000)


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _application(root: Path, name: str, dependency: str = "") -> None:
    element = f"<dependency>{dependency}</dependency>" if dependency else ""
    _write(root / name / "appliance.xml", APPLICATION.format(name=name, dependency=element))
    _write(root / name / "shared.img", SHARED)
    _write(root / name / "own.img", SQUASHFS + os.urandom(30_000))


class Server:
    """``python -m http.server`` on 127.0.0.1 serving ``root``; its log lists each request."""

    def __init__(self, root: Path, log: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        wait_until(lambda: httpx.get(self.url, timeout=1).status_code == 200, 15, "http.server")

    def requests(self, path: str = "") -> list[tuple[str, int]]:
        """(path, status) of each GET so far whose path starts with ``path``."""
        found = re.findall(r'"GET (\S+) HTTP/1\.\d" (\d+)', self.log.read_text())
        return [(p, int(status)) for p, status in found if p.startswith(path)]

    def feed_answers(self) -> list[int]:
        """The status of each GET of the feed itself."""
        return [status for p, status in self.requests() if p == "/channel.rss"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def published(tmp_path: Path) -> Iterator[tuple[Server, Path, str, Path]]:
    """A channel (served), its source folder and public key token, and the key file."""
    source = tmp_path / "appliances"
    _write(source / "tiny-os" / "appliance.xml", SUBSTRATE)
    for name in ("rootfs.img", "vmlinuz", "initrd.img"):
        _write(source / "tiny-os" / name, SQUASHFS + os.urandom(20_000))
    _application(source, "webserv")
    _application(source, "mailserv", "webserv")
    _application(source, "needy", "firewall")
    _application(source, "broken")
    _application(source, "ping", "pong")
    _application(source, "pong", "ping")
    # A publisher whose layer is no filesystem at all (past `channel build`'s own check).
    _application(source, "notfs")
    _write(source / "notfs" / "own.img", os.urandom(30_000))
    keyfile = tmp_path / "channel.key"
    key = generate_key(keyfile)
    out = tmp_path / "public"
    with mock.patch("lamina.channels.build.check_layer"):
        build_channel(source, out, load_private_key(keyfile))
    server = Server(out, tmp_path / "http.log")
    yield server, source, public_key_text(key), keyfile
    server.stop()


@pytest.fixture
def manager(make_cloud: Callable[..., Cloud]) -> Cloud:
    cloud = make_cloud()
    cloud.start_manager()
    return cloud


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def test_subscribe_list_refresh_and_refusals(
    manager: Cloud, published: tuple[Server, Path, str, Path], tmp_path: Path
) -> None:
    server, source, token, keyfile = published
    feed_url = server.url + "channel.rss"
    http = manager.http
    other = public_key_text(generate_key(tmp_path / "other.key"))

    # A key other than the channel's: refused, nothing stored.
    wrong = http.post("/channels", json={"url": feed_url, "key": other})
    assert "signature" in _error(wrong, 502, "verification_failed")["message"]
    # A tampered feed (its signature left as it was): refused too.
    tampered = tmp_path / "public" / "tampered.rss"
    tampered.write_bytes(
        (tmp_path / "public" / "channel.rss").read_bytes().replace(b"Tiny", b"Tiny!")
    )
    shutil.copy(tmp_path / "public" / "channel.rss.sig", str(tampered) + ".sig")
    bad = http.post("/channels", json={"url": server.url + "tampered.rss", "key": token})
    _error(bad, 502, "verification_failed")
    assert http.get("/channels").json()["channels"] == []

    # The right key, through the CLI: subscribed, its appliances listed.
    added = manager.cli("channel", "add", feed_url, "--key", token)
    assert "8 appliances" in added.stdout and "webserv" in added.stdout
    client = manager.client()
    [channel] = client.channels()
    assert channel["url"] == feed_url and channel["fingerprint"].startswith("sha256:")
    names = sorted(a["name"] for a in client.appliances())
    assert names == ["broken", "mailserv", "needy", "notfs", "ping", "pong", "tiny-os", "webserv"]
    assert client.appliances(installed=True) == []
    _error(http.post("/channels", json={"url": feed_url, "key": token}), 409, "conflict")

    # Refresh with nothing changed: a conditional GET answered 304, the cache kept.
    assert client.refresh_channel(channel["id"])["changes"] == []
    assert server.feed_answers()[-1] == 304
    assert len(client.appliances()) == 8

    # A new version published: the refresh says what is new.
    (source / "webserv" / "appliance.xml").write_text(
        APPLICATION.format(name="webserv", dependency="").replace("1.0.0-0", "1.1.0-0")
    )
    with mock.patch("lamina.channels.build.check_layer"):  # notfs, as first published
        build_channel(source, tmp_path / "public", load_private_key(keyfile))
    feed = tmp_path / "public" / "channel.rss"
    later = time.time() + 5
    os.utime(feed, (later, later))
    refreshed = manager.cli("channel", "refresh", channel["id"])
    assert re.search(r"webserv\s+1\.1\.0-0\s+updated", refreshed.stdout), refreshed.stdout
    assert server.feed_answers()[-1] == 200
    versions = {a["name"]: a["version"] for a in client.appliances()}
    assert versions["webserv"] == "1.1.0-0" and len(versions) == 8

    # Unsubscribe.
    removed = manager.cli("channel", "remove", channel["id"])
    assert "removed channel" in removed.stdout
    assert client.channels() == [] and client.appliances() == []


def _install(manager: Cloud, name: str) -> dict[str, Any]:
    client = manager.client()
    started = client.install_appliance(name)
    job = client.wait_job(started["job"]["id"], timeout=120)
    return {**started, "job": job}


def _image_count(manager: Cloud) -> int:
    response = manager.http.get("/images")
    return 0 if response.status_code == 404 else len(response.json()["images"])


def test_install_dependencies_shared_layers_refusals_and_remove(
    manager: Cloud, published: tuple[Server, Path, str, Path], tmp_path: Path
) -> None:
    server, _, token, _ = published
    client = manager.client()
    channel = client.add_channel(server.url + "channel.rss", token)

    # webserv needs its substrate: both are installed, substrate first.
    first = _install(manager, "webserv")
    assert first["job"]["status"] == "succeeded", first["job"]
    assert [a["name"] for a in first["appliances"]] == ["tiny-os", "webserv"]
    installed = {a["name"]: a for a in client.appliances(installed=True)}
    assert sorted(installed) == ["tiny-os", "webserv"]
    assert _image_count(manager) == 5  # rootfs, kernel, initrd; shared and own layer
    layers = manager.http.get("/images", params={"type": "layer"}).json()["images"]
    assert {i["status"] for i in layers} == {"available"}

    # mailserv depends on webserv (installed) and shares its first layer: only its own
    # layer is downloaded; the shared one is reused from the image repository.
    files_before = len(server.requests("/files/"))
    second = manager.cli("appliance", "install", "mailserv:1.0.0-0")
    assert re.search(r"mailserv\s+1\.0\.0-0\s+application", second.stdout), second.stdout
    assert ": succeeded" in second.stdout
    fetched = server.requests("/files/")[files_before:]
    assert len(fetched) == 2, fetched  # its definition and its own layer
    assert _image_count(manager) == 6
    [mail] = [a for a in client.appliances(installed=True) if a["name"] == "mailserv"]
    assert mail["status"] == "installed"

    # A missing dependency, or a cycle: refused before any file is downloaded (definitions
    # are read, to look for an appliance that provides it).
    feed = parse_feed((tmp_path / "public" / "channel.rss").read_bytes(), server.url)
    definitions = {f"/files/{item.definition.sha256}" for item in feed.items}
    files_before = len(server.requests("/files/"))
    missing = manager.http.post("/appliances/install", json={"name": "needy"})
    assert "firewall" in _error(missing, 409, "conflict")["message"]
    assert {p for p, _ in server.requests("/files/")[files_before:]} <= definitions
    cycle = manager.http.post("/appliances/install", json={"name": "ping"})
    assert "ping 1.0.0-0 -> pong 1.0.0-0 -> ping" in _error(cycle, 409, "conflict")["message"]
    assert {p for p, _ in server.requests("/files/")[files_before:]} <= definitions
    assert _image_count(manager) == 6

    # A tampered layer: the job rolls back, nothing installed, no image left.
    own = feed.find("broken").files[1].sha256
    (tmp_path / "public" / "files" / own).write_bytes(os.urandom(30_000))
    failed = _install(manager, "broken")
    assert failed["job"]["status"] == "rolled_back", failed["job"]
    assert "not the signed file" in failed["job"]["error"]
    assert "broken" not in {a["name"] for a in client.appliances(installed=True)}
    assert _image_count(manager) == 6
    assert list((manager.root / "manager" / "downloads").glob("*.part")) == []

    # A signed layer that is not a filesystem image: refused the same way.
    failed = _install(manager, "notfs")
    assert failed["job"]["status"] == "rolled_back", failed["job"]
    assert "is not a squashfs filesystem image" in failed["job"]["error"]
    assert "notfs" not in {a["name"] for a in client.appliances(installed=True)}
    assert _image_count(manager) == 6
    assert list((manager.root / "manager" / "downloads").glob("*.part")) == []

    # The channel cannot go while its appliances are installed; they can be removed.
    refused = manager.http.delete(f"/channels/{channel['id']}")
    assert "remove them first" in _error(refused, 409, "conflict")["message"]
    out = manager.cli("appliance", "remove", mail["id"])
    assert "removed mailserv" in out.stdout
    assert _image_count(manager) == 5  # its own layer went; the shared one stays
    for name in ("webserv", "tiny-os"):
        client.remove_appliance(installed[name]["id"])
    assert _image_count(manager) == 0
    client.remove_channel(channel["id"])
    assert client.channels() == []


def test_channels_and_appliances_by_name(
    manager: Cloud, published: tuple[Server, Path, str, Path], tmp_path: Path
) -> None:
    server, source, token, keyfile = published
    http = manager.http
    client = manager.client()
    first = client.add_channel(server.url + "channel.rss", token)
    # A second channel of the same title (the source folder's name).
    with mock.patch("lamina.channels.build.check_layer"):
        build_channel(source, tmp_path / "public2", load_private_key(keyfile))
    mirror = Server(tmp_path / "public2", tmp_path / "http2.log")
    try:
        second = client.add_channel(mirror.url + "channel.rss", token)
        assert first["title"] == second["title"] == "appliances"
        twice = _error(http.get("/channels/appliances"), 400, "ambiguous_name")
        assert {c["id"] for c in twice["details"]["candidates"]} == {first["id"], second["id"]}
        by_url = client.channel(mirror.url + "channel.rss")
        assert by_url["id"] == second["id"] and by_url["owner_key"] == "admin"
        assert {i["name"] for i in by_url["items"]} >= {"webserv", "tiny-os"}
        assert client.remove_channel(mirror.url + "channel.rss")["id"] == second["id"]
    finally:
        mirror.stop()
    assert client.channel("appliances")["id"] == first["id"]
    _error(http.get("/channels/nope"), 404, "not_found")

    assert _install(manager, "webserv")["job"]["status"] == "succeeded"
    shown = client.appliance("webserv")
    assert shown["installed"] is True and shown["substrate"] == "tiny-os:>=12,<13"
    assert shown["channel_title"] == "appliances" and shown["layers"] == 2
    # Not installed: the definition comes from the channel, verified.
    mail = client.appliance("mailserv")
    assert mail["installed"] is False and mail["dependencies"] == ["webserv"]
    assert mail["definition_error"] is None
    assert [v["version"] for v in mail["versions"]] == ["1.0.0-0"]

    # Removal and deploy by name: no such appliance (with a suggestion), not installed.
    typo = _error(http.delete("/appliances/websrv"), 404, "not_found")
    assert typo["details"]["suggestion"] == "webserv"
    assert "did you mean webserv?" in typo["message"]
    absent = _error(http.delete("/appliances/mailserv"), 404, "not_found")
    assert "mailserv is not installed" in absent["message"]
    _error(http.delete("/appliances/webserv", params={"version": "9"}), 404, "not_found")
    deploy = http.post("/appliances/mailserv/deploy", json={"name": "m1"})
    offered = _error(deploy, 409, "invalid_state")
    assert offered["details"]["installable"] is True
    assert offered["details"]["offered"] == ["1.0.0-0"]

    # Jobs by kind and by their target's name.
    [job] = client.jobs(kind="appliance.install", target="webserv")
    assert job["target_name"] == "webserv" and job["status"] == "succeeded"
    _error(http.get("/jobs", params={"kind": "nope"}), 400, "invalid_request")
    _error(http.get("/jobs", params={"status": "faild"}), 400, "invalid_request")

    removed = client.remove_appliance("webserv", version="1.0.0-0")
    assert removed["name"] == "webserv"


def test_the_manager_refreshes_its_channels_by_itself(
    make_cloud: Callable[..., Cloud], published: tuple[Server, Path, str, Path], tmp_path: Path
) -> None:
    server, source, token, keyfile = published
    cloud = make_cloud()
    cloud.start_manager(LAMINA_CHANNELS__REFRESH_MINUTES="0.02")  # every 1.2 s
    client = cloud.client()
    client.add_channel(server.url + "channel.rss", token)
    (source / "webserv" / "appliance.xml").write_text(
        APPLICATION.format(name="webserv", dependency="").replace("1.0.0-0", "2.0.0-0")
    )
    with mock.patch("lamina.channels.build.check_layer"):  # notfs, as first published
        build_channel(source, tmp_path / "public", load_private_key(keyfile))
    later = time.time() + 5
    os.utime(tmp_path / "public" / "channel.rss", (later, later))

    def webserv() -> str:
        return str({a["name"]: a["version"] for a in client.appliances()}["webserv"])

    wait_until(lambda: webserv() == "2.0.0-0", 30, "the periodic refresh")
    assert server.feed_answers()[-1] == 200


def test_a_loopback_channel_needs_channels_allow_private(
    make_cloud: Callable[..., Cloud], published: tuple[Server, Path, str, Path]
) -> None:
    """Channels follow the fetch policy: a feed on loopback is refused unless
    channels.allow_private says otherwise (as `make up` does for its sample channel), with
    the one answer of every refused fetch, and nothing reaches the server."""
    server, _, token, _ = published
    cloud = make_cloud()
    cloud.base_env.pop("LAMINA_CHANNELS__ALLOW_PRIVATE", None)  # the default
    cloud.start_manager()
    for url in (server.url + "channel.rss", server.url.replace("127.0.0.1", "2130706433")):
        refused = cloud.http.post("/channels", json={"url": url, "key": token})
        assert _error(refused, 400, "location_unavailable")["message"] == (
            "the location could not be fetched"
        )
    assert server.feed_answers() == []
    assert cloud.http.get("/channels").json()["channels"] == []
