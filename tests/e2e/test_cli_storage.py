"""``lamina image``, ``volume`` and ``snapshot`` as people expect them (issue 14): every
command takes names as well as ids, ``list`` and ``show`` in every group (the older verbs as
aliases), choices checked by the CLI, readable sizes and names in the listings, help with
examples."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import click
import pytest
from harness import Cloud

from lamina.cli import image, snapshot, volume

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def as_json(cloud: Cloud, *args: str) -> Any:
    return json.loads(cloud.cli("--json", *args).stdout)


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def test_images_by_name(cloud: Cloud, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    path = tmp_path / "nx.raw"
    path.write_bytes(data)
    added = as_json(cloud, "image", "add", "name=nx-eval", "format=raw", "-f", str(path))
    image_id = added["id"]
    # Private unless said otherwise, as instances and networks.
    assert added["access"] == "private"

    shown = cloud.cli("image", "show", "nx-eval").stdout
    assert image_id in shown and "3.0 MiB (3145728 bytes)" in shown
    assert as_json(cloud, "image", "show", "nx-eval")["size"] == 3 * MiB
    assert "3.0 MiB" in cloud.cli("image", "head", "nx-eval").stdout  # VISOR's name

    saves = tmp_path / "saves"
    saves.mkdir()
    got = cloud.cli("image", "get", "nx-eval", "--save", str(saves)).stdout
    assert f"saved to {saves / f'{image_id}.raw'}" in got
    assert hashlib.sha256((saves / f"{image_id}.raw").read_bytes()).digest() == (
        hashlib.sha256(data).digest()
    )
    assert as_json(cloud, "image", "update", "nx-eval", "os=linux")["os"] == "linux"
    history = cloud.cli("image", "history", "nx-eval").stdout
    assert "register" in history and "update" in history

    # An image's kernel may be named too; it is kept as the id.
    kernel_id = as_json(cloud, "image", "add", "name=vmlinuz-6", "type=kernel")["id"]
    booted = as_json(cloud, "image", "add", "name=box", "kernel=vmlinuz-6")
    assert booted["kernel"] == kernel_id
    unknown = cloud.cli("image", "add", "name=box2", "kernel=vmlinuz-7", check=False)
    assert (
        unknown.returncode == 2 and "kernel 'vmlinuz-7' is not a registered image" in unknown.stderr
    )

    # A name with a space travels as one path segment.
    cloud.cli("image", "add", "name=Debian 12", "format=iso", "access=public")
    assert as_json(cloud, "image", "show", "Debian 12")["access"] == "public"

    # Two images of one name: an error listing both ids (exit 2), the ids still work.
    first = as_json(cloud, "image", "add", "name=dup")["id"]
    second = as_json(cloud, "image", "add", "name=dup")["id"]
    dup = cloud.cli("image", "delete", "dup", check=False)
    assert dup.returncode == 2, dup.stderr
    assert "several images are named 'dup'" in dup.stderr
    assert first in dup.stderr and second in dup.stderr
    ambiguous_head = cloud.cli("image", "show", "dup", check=False)
    assert ambiguous_head.returncode == 2 and first in ambiguous_head.stderr
    cloud.cli("image", "delete", first, second)

    missing = cloud.cli("image", "get", "no-such", check=False)
    assert missing.returncode == 1 and "image 'no-such' does not exist" in missing.stderr
    out = cloud.cli("image", "delete", "nx-eval").stdout
    assert out == f"deleted {image_id} (nx-eval)\n"


def test_image_listings(cloud: Cloud, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(os.urandom(5 * MiB + 512))
    cloud.cli("image", "add", "name=disk", "format=qcow2", "architecture=x86_64", "-f", str(disk))
    cloud.cli("image", "add", "name=later", "format=raw")

    rows = table(cloud.cli("image", "list").stdout)
    assert rows[0] == [
        "ID", "NAME", "ARCHITECTURE", "ACCESS", "TYPE", "FORMAT", "SIZE", "STORE", "STATUS",
    ]  # fmt: skip
    disk_row = next(r for r in rows if r[1] == "disk")
    assert disk_row[6:8] == ["5.0", "MiB"]  # human size; JSON keeps bytes
    listed = as_json(cloud, "image", "list", "--format", "qcow2")
    assert [(i["name"], i["size"]) for i in listed] == [("disk", 5 * MiB + 512)]
    assert [i["name"] for i in as_json(cloud, "image", "list", "--status", "locked")] == ["later"]
    assert [i["name"] for i in as_json(cloud, "image", "brief", "--name", "later")] == ["later"]
    long = cloud.cli("image", "list", "--long", "--access", "private", "--type", "machine")
    assert long.stdout == "(none)\n"
    detail = cloud.cli("image", "detail", "--architecture", "x86_64").stdout  # VISOR's name
    assert "sha256" in detail and "5.0 MiB (5243392 bytes)" in detail and "later" not in detail

    # Choices are the CLI's to check, with the allowed values.
    for flag, wrong in (("--format", "qcow3"), ("--status", "availabel"), ("--access", "all")):
        bad = cloud.cli("image", "list", flag, wrong, check=False)
        assert bad.returncode == 2 and f"Invalid value for '{flag}'" in bad.stderr
        assert f"'{wrong}' is not one of" in bad.stderr
    assert (
        "'colour' is not one of" in cloud.cli("image", "list", "-s", "colour", check=False).stderr
    )


def test_volumes_and_snapshots_by_name(cloud: Cloud, kernel: str) -> None:
    cloud.cli("instance", "create", "web", "--kernel", kernel, "--memory", "64")
    made = as_json(cloud, "volume", "create", "--name", "data", "--size", "16M")
    volume_id = made["volume"]["id"]
    assert made["volume"]["name"] == "data" and made["job"]["status"] == "succeeded"

    cloud.cli("volume", "attach", "data", "web")
    rows = table(cloud.cli("volume", "list").stdout)
    assert rows[0][:6] == ["ID", "NAME", "STATUS", "SIZE", "INSTANCE", "DEVICE"]
    assert rows[1][:7] == [volume_id, "data", "in-use", "16.0", "MiB", "web", "vdb"]
    shown = cloud.cli("volume", "show", "data").stdout
    assert "name" in shown and "data" in shown and "in-use" in shown
    assert as_json(cloud, "volume", "show", "data")["attachment"]["instance_name"] == "web"
    assert [v["id"] for v in as_json(cloud, "volume", "list", "--instance", "web")] == [volume_id]

    snap = as_json(cloud, "snapshot", "create", "data", "--name", "nightly")["snapshot"]
    assert (snap["name"], snap["volume"]) == ("nightly", volume_id)
    snaps = table(cloud.cli("snapshot", "list", "--volume", "data").stdout)
    assert snaps[0][:3] == ["ID", "NAME", "VOLUME"] and snaps[1][:4] == [
        snap["id"], "nightly", "data", "completed",
    ]  # fmt: skip
    assert as_json(cloud, "snapshot", "show", "nightly")["id"] == snap["id"]
    assert snap["id"] in cloud.cli("snapshot", "describe", "nightly").stdout  # VBS's name

    cloud.cli("volume", "detach", "data")
    restored = as_json(cloud, "volume", "create", "--name", "restored", "--snapshot", "nightly")
    assert restored["volume"]["snapshot"] == snap["id"]
    cloud.cli("volume", "extend", "data", "--size", "32M")
    assert as_json(cloud, "volume", "show", "data")["size_bytes"] == 32 * MiB
    described = as_json(cloud, "volume", "describe", "data", "restored")  # VBS's name
    assert [v["name"] for v in described] == ["data", "restored"]

    # Choices, sizes and names are checked before anything is sent, naming the flag.
    bad_status = cloud.cli("volume", "list", "--status", "inuse", check=False)
    assert bad_status.returncode == 2 and "'inuse' is not one of" in bad_status.stderr
    assert "'in-use'" in bad_status.stderr
    bad_size = cloud.cli("volume", "extend", "data", "--size", "12X", check=False)
    assert bad_size.returncode == 2 and "Invalid value for '--size'" in bad_size.stderr
    bad_name = cloud.cli("volume", "create", "--name", "Bad_Name", "--size", "1M", check=False)
    assert bad_name.returncode == 2 and "volume name 'Bad_Name' must be" in bad_name.stderr
    bad_device = cloud.cli("volume", "attach", "data", "web", "--device", "sda", check=False)
    assert bad_device.returncode == 2 and "'sda' is not one of" in bad_device.stderr
    nowhere = cloud.cli("volume", "attach", "data", check=False)
    assert nowhere.returncode == 2 and "give the INSTANCE" in nowhere.stderr

    cloud.cli("volume", "delete", "restored")
    cloud.cli("snapshot", "delete", "nightly")
    cloud.cli("volume", "delete", "data")
    assert cloud.cli("volume", "list").stdout == "(none)\n"
    gone = cloud.cli("volume", "show", "data", check=False)
    assert gone.returncode == 1 and "volume 'data' does not exist" in gone.stderr


def _commands(group: click.Group) -> list[tuple[str, click.Command]]:
    return [(f"lamina {group.name} {name}", cmd) for name, cmd in sorted(group.commands.items())]


def test_every_storage_command_explains_itself() -> None:
    problems = []
    for group in (image.image, volume.volume, snapshot.snapshot):
        assert {"list", "show"} <= set(group.commands)
        for path, command in _commands(group):
            text = inspect.cleandoc(command.help or "")
            # click's no-rewrap mark, then the examples, each a lamina command line.
            if not re.search(r"\x08\s*\n\s*Examples:\n(\s+lamina .+\n?)+$", text):
                problems.append(f"{path}: its help does not end with an Examples block")
            for param in command.params:
                if isinstance(param, click.Option) and not param.help:
                    problems.append(f"{path} {param.opts[0]}: no help")
    assert not problems, "\n".join(problems)
    for group, old, new, why in (
        (image.image, "brief", "list", "VISOR's name"),
        (image.image, "detail", "list", "VISOR's name"),
        (image.image, "head", "show", "VISOR's name"),
        (volume.volume, "describe", "list", "VBS's name"),
        (snapshot.snapshot, "describe", "list", "VBS's name"),
    ):
        assert group.commands[old].callback is group.commands[new].callback
        assert f"Alias of `lamina {group.name} {new}` ({why}" in (group.commands[old].help or "")
