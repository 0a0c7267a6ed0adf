"""Deploying installed appliances, end to end: a channel built by ``build_channel`` and served
by ``python -m http.server`` on loopback, a real manager and an agent on libvirt's test
driver. A traditional appliance becomes a running instance whose root disk is a qcow2 overlay
on the host's cached copy of the appliance's image; a substrate becomes a layered instance
(its layer shared from the cache, an ext4 instance layer, a config disk); bad variables are
refused before anything is created. Layered guests really booting: test_layered_appliances."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Cloud
from test_channels_manager import Server

from lamina.channels.build import build_channel
from lamina.channels.signing import generate_key, load_private_key, public_key_text

pytestmark = pytest.mark.integration

WIKI = """<appliance version="1.0" name="legacy-wiki" kind="traditional">
  <label>Legacy wiki</label>
  <version>1.0.0-0</version>
  <hardware><cpus>2</cpus><memory>131072</memory></hardware>
  <image format="qcow2" source="wiki.qcow2"/>
  <variables>
    <variable name="domain" type="hostname" required="true"/>
    <variable name="port" type="int" default="80"/>
  </variables>
</appliance>
"""

SUBSTRATE = """<appliance version="1.0" name="tiny-os" kind="substrate">
  <label>Tiny OS</label>
  <version>12.5</version>
  <layers><layer format="squashfs" source="rootfs.img"/></layers>
  <boot><kernel source="vmlinuz"/><initrd source="initrd.img"/></boot>
</appliance>
"""


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A served channel with a traditional appliance (a small qcow2) and a substrate: its
    feed URL and public key token."""
    source = tmp_path / "appliances"
    _write(source / "legacy-wiki" / "appliance.xml", WIKI)
    image = source / "legacy-wiki" / "wiki.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    _write(source / "tiny-os" / "appliance.xml", SUBSTRATE)
    for name in ("rootfs.img", "vmlinuz", "initrd.img"):
        # squashfs's magic number, so it passes for a layer; it is never booted here.
        _write(source / "tiny-os" / name, b"hsqs" + os.urandom(20_000))
    keyfile = tmp_path / "channel.key"
    key = generate_key(keyfile)
    out = tmp_path / "public"
    build_channel(source, out, load_private_key(keyfile))
    server = Server(out, tmp_path / "http.log")
    yield server.url + "channel.rss", public_key_text(key)
    server.stop()


def _install(cloud: Cloud, name: str) -> dict[str, Any]:
    with cloud.client() as client:
        started = client.install_appliance(name)
        job = client.wait_job(started["job"]["id"], timeout=120)
        assert job["status"] == "succeeded", job
        [row] = [a for a in client.appliances(installed=True) if a["name"] == name]
        return row


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def _instances(cloud: Cloud) -> list[dict[str, Any]]:
    with cloud.client() as client:
        return client.instances()


def test_deploy_a_traditional_appliance_and_refusals(
    cloud: Cloud, channel: tuple[str, str]
) -> None:
    url, token = channel
    cloud.cli("channel", "add", url, "--key", token)
    wiki = _install(cloud, "legacy-wiki")
    http = cloud.http

    # Bad variables: one 400 naming every problem, and no instance.
    unknown = http.post(
        f"/appliances/{wiki['id']}/deploy",
        json={"name": "w0", "vars": {"domain": "wiki.example.org", "colour": "red"}},
    )
    assert "colour" in _error(unknown, 400, "invalid_request")["message"]
    missing = http.post(f"/appliances/{wiki['id']}/deploy", json={"name": "w0", "vars": {}})
    assert "domain is required" in _error(missing, 400, "invalid_request")["message"]
    wrong = http.post(
        "/appliances/legacy-wiki/deploy",
        json={"name": "w0", "vars": {"domain": "not a host!", "port": "eighty"}},
    )
    problems = _error(wrong, 400, "invalid_request")["details"]["problems"]
    assert len(problems) == 2 and any("int" in p for p in problems), problems
    bad_cli = cloud.cli("appliance", "deploy", "legacy-wiki", "--name", "w0", check=False)
    assert bad_cli.returncode != 0 and "domain is required" in bad_cli.stderr
    assert _instances(cloud) == []

    # Deployed through the CLI, by name, with a variable: a running instance on h1 sized by
    # the appliance's <hardware>, its root a qcow2 overlay on the cached image.
    out = cloud.cli(
        "--json", "appliance", "deploy", "legacy-wiki", "--name", "wiki1", "--var",
        "domain=Wiki.Example.org",
    )  # fmt: skip
    deployed = json.loads(out.stdout)
    assert deployed["variables"] == {"domain": "wiki.example.org", "port": "80"}
    assert deployed["job"]["status"] == "succeeded"
    vm = deployed["instance"]
    assert (vm["status"], vm["host"], vm["vcpus"], vm["memory_mib"]) == ("running", "h1", 2, 128)
    # The instance records the image and its digest, not where a store keeps it.
    image_id, digest = vm["disk_image"].removeprefix("image:").split("@sha256:")
    with cloud.client() as client:
        assert client.image(image_id)["sha256"] == digest
    root = cloud.root / "agent-h1" / "guests" / f"lamina-{vm['id']}" / "root.img"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(root)], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 16 * 1024 * 1024
    assert info["backing-filename-format"] == "qcow2"
    assert "/cache/" in info["backing-filename"]

    # The Python client, with explicit sizes: a second overlay on the same cached base.
    with cloud.client() as client:
        second = client.deploy_appliance(
            wiki["id"], "wiki2", {"domain": "w2.example.org"}, memory_mib=64, vcpus=1
        )
        # The deploy's answer describes the instance as GET /instances/{ref} does: with what
        # the other domains' views add (its appliance, volumes) and its owner's name.
        answered = second["instance"]
        assert answered["appliance"] == {"id": wiki["id"], "name": "legacy-wiki",
                                         "version": wiki["version"]}  # fmt: skip
        assert (answered["owner_name"], answered["volumes"]) == ("admin", [])
        assert client.wait_job(second["job"]["id"], timeout=60)["status"] == "succeeded"
        vm2 = client.instance("wiki2")
        assert answered.keys() == vm2.keys()
        same = ("owner", "owner_name", "appliance", "volumes", "networks", "disk_image")
        assert [answered[k] for k in same] == [vm2[k] for k in same]
        assert (vm2["status"], vm2["memory_mib"], vm2["vcpus"]) == ("running", 64, 1)
        # Shown with the appliance's name and version beside its id (instance show, too).
        assert vm2["appliance"] == {"id": wiki["id"], "name": "legacy-wiki",
                                    "version": wiki["version"]}  # fmt: skip
        shown = cloud.cli("instance", "show", "wiki2").stdout.splitlines()
        assert f"legacy-wiki {wiki['version']} ({wiki['id']})" in " ".join(shown)
        # The appliance cannot be removed while its instances boot from its image.
        removal = http.delete(f"/appliances/{wiki['id']}")
        _error(removal, 409, "conflict")
    root2 = root.parent.parent / f"lamina-{vm2['id']}" / "root.img"
    info2 = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(root2)], capture_output=True, check=True
        ).stdout
    )
    assert info2["backing-filename"] == info["backing-filename"]
    cached = [p for p in (cloud.root / "agent-h1" / "cache").iterdir() if len(p.name) == 64]
    assert len(cached) == 1

    # A substrate deploys as a layered instance: its layer by digest, serials on the command
    # line, an ext4 instance layer and a tar config disk made by the host.
    _install(cloud, "tiny-os")
    with cloud.client() as client:
        layered = client.deploy_appliance("tiny-os", "t0")
        assert client.wait_job(layered["job"]["id"], timeout=60)["status"] == "succeeded"
        t0 = client.instance("t0")
    [layer] = t0["layers"]
    assert t0["disk_image"] is None and t0["kernel"].startswith("image:")
    assert layer["source"] == f"image:{layer['image']}@sha256:{layer['sha256']}"
    assert t0["cmdline"].endswith("lamina.layers=l0 lamina.upper=upper lamina.config=config")
    guest = root.parent.parent / f"lamina-{t0['id']}"
    fs = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", str(guest / "upper.img")],
                        capture_output=True, text=True)  # fmt: skip
    assert fs.stdout.strip() == "ext4"
    with tarfile.open(guest / "config.img") as tar:
        assert tar.extractfile("hostname").read() == b"t0\n"  # type: ignore[union-attr]
    assert (cloud.root / "agent-h1" / "cache" / layer["sha256"]).is_file()
