"""`make up HOSTS=2` on a data directory, ports, namespace names and subnet of its own: two
namespace hosts, each with its own libvirtd and agent, enrolled and up; the sample web page
answers from this namespace at the URL make up printed; every libvirtd listens with TLS only,
with its host's migration certificate; a second make up without HOSTS remembers two hosts and
starts nothing twice; `make down` leaves no namespace, daemon or bridge behind."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from harness import ROOT, free_port

pytestmark = pytest.mark.e2e


def run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", f"scripts/{script}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


def lamina(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [str(ROOT / ".venv/bin/lamina"), *args], cwd=ROOT, env=env, capture_output=True,
        text=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def free_subnet() -> str:
    used = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        prefix = f"10.94.{random.randrange(256)}."
        if prefix not in used:
            return prefix + "0/24"
    raise AssertionError("no free 10.94.X.0/24 subnet")


def leftovers(prefix: str, lab: Path) -> list[str]:
    """Namespaces, links and processes of this lab still there."""
    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    procs = subprocess.run(["pgrep", "-af", str(lab)], capture_output=True, text=True).stdout
    found = [line for line in (netns + links).splitlines() if line.startswith(prefix)]
    return found + [p for p in procs.splitlines() if "pgrep" not in p]


def test_up_with_two_hosts_twice_then_down(tmp_path: Path) -> None:
    data = tmp_path / "var"
    prefix = f"le{uuid.uuid4().hex[:4]}"
    web_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env.update(
        HOSTS="2",
        LAMINA_DATA_DIR=str(data),
        LAMINA_MANAGER__PORT=str(free_port()),
        LAMINA_SAMPLE_CHANNEL_PORT=str(free_port()),
        LAMINA_CLI_LINK="",
        LAMINA_CREDENTIALS=str(tmp_path / "credentials"),
        LAMINA_SAMPLE_WEB_PORT=str(web_port),
        LAMINA_HOSTS_PREFIX=prefix,
        LAMINA_HOSTS_SUBNET=free_subnet(),
    )
    lab = data / "hosts"
    up = run("up.sh", env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "2 hosts (h1 h2)" in up.stdout
        hosts = json.loads(lamina(env, "--json", "host", "list"))
        assert {h["name"]: h["status"] for h in hosts} == {"h1": "up", "h2": "up"}
        # The page, from this namespace, at the URL make up printed (a floating address of
        # the data-centre network, or web's host's own).
        url = re.search(r"The web appliance: (http://\S+)", up.stdout)
        assert url and url[1].endswith(f":{web_port}/"), up.stdout
        page = httpx.get(url[1], timeout=10)
        assert page.status_code == 200 and "web.lamina.test" in page.text
        # Each host's libvirtd: TLS only, with the migration certificate its agent got.
        record = json.loads((lab / "lab.json").read_text())
        for host in record["hosts"]:
            assert host["pki"] == str(lab / host["name"] / "agent" / "pki")
            listening = subprocess.run(
                ["ip", "netns", "exec", host["netns"], "ss", "-Hltn"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert f"{host['address']}:16514" in listening and ":16509" not in listening
        assert [h["tgtd"] for h in record["hosts"]] == [True, False]

        # Again, without HOSTS: the same two hosts, nothing started twice.
        del env["HOSTS"]
        again = run("up.sh", env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert " started (pid" not in again.stdout, again.stdout
        assert "2 hosts (h1 h2)" in again.stdout
        assert httpx.get(url[1], timeout=10).status_code == 200
    finally:
        down = run("down.sh", env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "hosts removed" in down.stdout
    assert leftovers(prefix, lab) == []
