"""Checkpoints of a real layered guest (TCG), through the CLI, manager, agent and libvirt: the
sample channel's ``ticker`` (a counter in the guest's memory, printed on the console every
second) deployed, checkpointed while it runs on, restored (the counter goes on from where it
was saved, not from 1), a checkpoint recording another QEMU and machine type refused before
anything moves, and the checkpoints deleted, alone and with their instance."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clouds import add_host
from harness import ROOT, Cloud, wait_until
from test_channels_manager import Server

from lamina.channels.build import build_channel
from lamina.channels.signing import generate_key, load_private_key, public_key_text

pytestmark = pytest.mark.integration
BOOT = 120  # seconds for a layered guest to start counting under TCG
TICK = re.compile(r"ticker: (\d+)")


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The sample channel built and served: (feed URL, its public key)."""
    root = tmp_path_factory.mktemp("sample-channel")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-channel.sh"), str(root)], check=True)
    key = generate_key(root / "channel.key")
    build_channel(root / "sources", root / "public", load_private_key(root / "channel.key"))
    server = Server(root / "public", root / "http.log")
    yield server.url + "channel.rss", public_key_text(key)
    server.stop()


def console(cloud: Cloud, name: str, offset: int = 0) -> tuple[str, int]:
    with cloud.client() as client:
        chunk = client.console(name, offset)
    return str(chunk["data"]), int(chunk["offset"])


def ticks(text: str) -> list[int]:
    return [int(n) for n in TICK.findall(text)]


def restored(text: str, last: int) -> list[int]:
    """The ticks from the first that is lower than the one before it (the restored guest's),
    ``last`` being the tick before ``text``."""
    seen = [last, *ticks(text)]
    for i in range(1, len(seen)):
        if seen[i] < seen[i - 1]:
            return seen[i:]
    return []


def counter(cloud: Cloud, name: str) -> int:
    """The guest's counter as its console shows it now."""
    return max(ticks(console(cloud, name)[0]), default=0)


def wait_counter(cloud: Cloud, name: str, above: int, timeout: float = 60) -> int:
    wait_until(lambda: counter(cloud, name) > above, timeout, f"{name} counting past {above}")
    return counter(cloud, name)


def database(cloud: Cloud) -> Path:
    [found] = (cloud.root / "manager").glob("*.db")
    return found


def test_checkpoint_restore_and_refusal_of_a_real_layered_guest(
    make_cloud: Callable[..., Cloud], channel: tuple[str, str]
) -> None:
    url, key = channel
    cloud = make_cloud()
    cloud.start_manager()
    add_host(cloud, "h1", uri="qemu:///system")
    cloud.cli("channel", "add", url, "--key", key)
    cloud.cli("appliance", "install", "ticker")
    cloud.cli("appliance", "deploy", "ticker", "--name", "tick")
    wait_counter(cloud, "tick", 2, BOOT)

    # A checkpoint while it runs: it goes on counting, never restarted.
    before = counter(cloud, "tick")
    started = time.monotonic()
    cloud.cli("instance", "checkpoint", "tick", "--as", "c1")
    took = time.monotonic() - started
    after = counter(cloud, "tick")
    [made] = json.loads(cloud.cli("--json", "instance", "checkpoint", "list", "tick").stdout)
    assert made["name"] == "c1" and made["status"] == "available", made
    assert made["requires"]["machine"].startswith("pc-") and made["requires"]["qemu_version"]
    assert made["requires"]["domain_type"] in ("qemu", "kvm")
    print(f"checkpoint: {took:.2f} s, guest paused {made['paused_seconds']:.2f} s, "
          f"{made['size'] / 2**20:.1f} MiB")  # fmt: skip
    later = wait_counter(cloud, "tick", after + 2)
    shown = json.loads(cloud.cli("--json", "instance", "show", "tick").stdout)
    assert shown["status"] == "running"
    # Its files are private images of its owner.
    images = {i["id"]: i for i in json.loads(cloud.cli("--json", "image", "list").stdout)}
    assert set(made["images"].values()) <= set(images)
    assert {images[i]["access"] for i in made["images"].values()} == {"private"}

    # A checkpoint recording a newer QEMU and a machine type this host lacks: refused with
    # those reasons before anything is touched.
    cloud.cli("instance", "checkpoint", "tick", "--as", "c2")
    with sqlite3.connect(database(cloud)) as db:
        [(raw,)] = db.execute("SELECT requires FROM checkpoints WHERE name = 'c2'")
        requires = {**json.loads(raw), "qemu_version": "99.0.0", "machine": "pc-i440fx-99.0"}
        db.execute("UPDATE checkpoints SET requires = ? WHERE name = 'c2'", [json.dumps(requires)])
    refused = cloud.cli("instance", "restore", "tick", "c2", check=False)
    assert refused.returncode != 0
    assert "QEMU 99.0.0" in refused.stderr and "pc-i440fx-99.0" in refused.stderr, refused.stderr
    jobs = json.loads(cloud.cli("--json", "job", "list").stdout)
    assert not [j for j in jobs if j["kind"] == "checkpoint.restore"]
    running = wait_counter(cloud, "tick", max(later, counter(cloud, "tick")))

    # Restore c1: the counter goes on from the value it had when c1 was taken.
    text, offset = console(cloud, "tick")
    last = ticks(text)[-1]
    started = time.monotonic()
    cloud.cli("instance", "restore", "tick", "c1")
    restore_took = time.monotonic() - started
    [job] = [j for j in json.loads(cloud.cli("--json", "job", "list").stdout)
             if j["kind"] == "checkpoint.restore"]  # fmt: skip
    print(f"restore: {restore_took:.2f} s (job {job['id']})")
    # The old guest may print a tick or two before it is stopped: the restored one's first
    # is the first that goes back.
    wait_until(lambda: restored(console(cloud, "tick", offset)[0], last), 30, "ticks after restore")
    first = restored(console(cloud, "tick", offset)[0], last)[0]
    assert before - 1 <= first - 1 <= after + 1, (before, first, after, running)
    assert first < running  # back in time: to c1, not on from where it was
    wait_until(
        lambda: max(restored(console(cloud, "tick", offset)[0], last)) > first + 2,
        30,
        "counting on after the restore",
    )
    shown = json.loads(cloud.cli("--json", "instance", "show", "tick").stdout)
    assert shown["status"] == "running"
    assert took <= 15 and restore_took <= 15  # the 5 s target is benchmarks/checkpoint.py's

    # Delete c2, then the instance: its checkpoints and their images go with it.
    cloud.cli("instance", "checkpoint", "delete", "tick", "c2")
    left = json.loads(cloud.cli("--json", "instance", "checkpoint", "list", "tick").stdout)
    assert [c["name"] for c in left] == ["c1"]
    cloud.cli("instance", "delete", "tick", "--yes")
    assert json.loads(cloud.cli("--json", "instance", "checkpoint", "list").stdout) == []
    ids = {i["id"] for i in json.loads(cloud.cli("--json", "image", "list").stdout)}
    assert not set(made["images"].values()) & ids
