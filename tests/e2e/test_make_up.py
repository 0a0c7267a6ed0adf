"""`make up`'s script on a data directory and ports of its own: it starts a manager, an agent
enrolled automatically, the bundled sample channel and the sample web appliance deployed from
it, starts nothing twice, and `make down` stops it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from harness import ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e


def run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", f"scripts/{script}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def lamina(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [str(ROOT / ".venv/bin/lamina"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_up_twice_then_down(tmp_path: Path) -> None:
    data = tmp_path / "var"
    netns, web_port = f"lamina-e2e-{os.getpid()}", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env.update(
        LAMINA_DATA_DIR=str(data),
        LAMINA_MANAGER__PORT=str(free_port()),
        LAMINA_AGENT__PORT=str(free_port()),
        LAMINA_SAMPLE_CHANNEL_PORT=str(free_port()),
        LAMINA_CLI_LINK="",
        LAMINA_CREDENTIALS=str(tmp_path / "credentials"),
        LAMINA_AGENT__NETWORK_NAMESPACE=netns,
        LAMINA_SAMPLE_WEB_PORT=str(web_port),
    )
    up = run("up.sh", env)
    domain = None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Lamina is up" in up.stdout and ".venv/bin/lamina instance console web" in up.stdout
        rows = json.loads(lamina(env, "--json", "instance", "list"))
        assert [(r["name"], r["status"]) for r in rows] == [("web", "running")]
        domain = f"lamina-{rows[0]['id']}"
        # The page, as the new user fetches the URL make up printed: through the port forward
        # on loopback into the guest on the default network, inside the namespace.
        url = f"http://127.0.0.1:{web_port}/"
        assert f"The web appliance: {url}" in up.stdout
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "web.lamina.test" in page.text
        shown = json.loads(lamina(env, "--json", "instance", "show", "web"))
        assert shown["networks"][0]["network"] == "default"
        assert shown["networks"][0]["fqdn"] == "web.default.lamina.internal"
        console = lamina(env, "instance", "console", "web")
        assert "webserv: serving web.lamina.test on port 80" in console
        # The bundled channel, subscribed: its substrate and both applications.
        listed = {a["name"] for a in json.loads(lamina(env, "--json", "appliance", "list"))}
        assert listed >= {"lamina-base", "webserv", "dnsserv"}
        # A volume, as the README's new user would: created, attached to the web appliance
        # (whose substrate announces the hot-plugged disk), detached, deleted.
        vol = json.loads(lamina(env, "--json", "volume", "create", "--size", "1G"))
        vol_id = vol["volume"]["id"]
        lamina(env, "volume", "attach", vol_id, "--instance", "web")
        appeared = rf"disk vd[a-z] appeared: serial {vol_id}, {1024**3} bytes"
        wait_until(lambda: re.search(appeared, lamina(env, "instance", "console", "web")), 30,
                   "the volume inside the guest")  # fmt: skip
        lamina(env, "volume", "detach", vol_id)
        wait_until(lambda: "gone" in lamina(env, "instance", "console", "web"), 30, "unplug")
        lamina(env, "volume", "delete", vol_id)
        assert json.loads(lamina(env, "--json", "volume", "describe")) == []
        names = ("manager", "agent", "channel-server")
        pids = {name: (data / "run" / f"{name}.pid").read_text() for name in names}

        (first,) = json.loads(lamina(env, "--json", "channel", "list"))
        again = run("up.sh", env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "manager already running" in again.stdout
        assert "agent already running" in again.stdout
        assert "channel-server already running" in again.stdout
        assert {n: (data / "run" / f"{n}.pid").read_text() for n in pids} == pids
        assert len(json.loads(lamina(env, "--json", "instance", "list"))) == 1
        # The second make up read the channel it rebuilt again (this tree's samples).
        (channel,) = json.loads(lamina(env, "--json", "channel", "list"))
        assert channel["title"] == "Lamina samples"
        assert channel["refreshed_at"] > first["refreshed_at"]
    finally:
        down = run("down.sh", env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "web appliance stopped" in down.stdout and "manager stopped" in down.stdout
    for pid in pids.values():
        assert not Path(f"/proc/{pid.strip()}").exists()
    netns_left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert netns not in netns_left.split()
    state = subprocess.run(
        ["virsh", "-c", "qemu:///system", "domstate", domain], capture_output=True, text=True
    ).stdout.strip()
    assert state == "shut off"
    # Leave no guest definition behind on the shared libvirtd.
    subprocess.run(["virsh", "-c", "qemu:///system", "undefine", domain], capture_output=True)
