"""The catalog from the command line (appliances, channels, jobs) against a running Lamina:
names everywhere, `show` in every group, deploy of an appliance that is not installed, job
lists that name their targets. A channel built by ``build_channel`` is served by
``python -m http.server`` on loopback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import Cloud, free_port, wait_until

from lamina.channels.build import build_channel
from lamina.channels.signing import generate_key, load_private_key, public_key_text

pytestmark = pytest.mark.e2e

WIKI = """<appliance version="1.0" name="legacy-wiki" kind="traditional">
  <label>Legacy wiki</label>
  <description>A wiki of old.</description>
  <version>{version}</version>
  <webpanel>/admin</webpanel>
  <hardware><cpus>2</cpus><memory>131072</memory></hardware>
  <image format="qcow2" source="wiki.qcow2"/>
  <variables>
    <variable name="domain" type="hostname" required="true" description="Its site's name"/>
    <variable name="port" type="int" default="80"/>
  </variables>
  <ports>
    <port variable="port" name="http" description="The wiki"/>
    <port number="8443" protocol="udp"/>
  </ports>
</appliance>
"""
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TITLE = "catalog"


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A served channel titled ``catalog`` with two versions of a traditional appliance (a
    small qcow2 each): its feed URL and public key token."""
    source = tmp_path / TITLE
    for version, size in (("1.0.0-0", "16M"), ("1.1.0-0", "17M")):
        folder = source / f"legacy-wiki-{version}"
        folder.mkdir(parents=True)
        (folder / "appliance.xml").write_text(WIKI.format(version=version))
        image = folder / "wiki.qcow2"
        # Two sizes: two images (the same bytes would be one image, content-addressed).
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), size], check=True)
    keyfile = tmp_path / "channel.key"
    key = generate_key(keyfile)
    out = tmp_path / "public"
    build_channel(source, out, load_private_key(keyfile))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=out,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, 15, "http.server")
        yield url + "channel.rss", public_key_text(key)
    finally:
        server.terminate()
        server.wait(10)


def _as(
    cloud: Cloud, access_key: str, secret: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The command line run as another user."""
    saved = dict(cloud.base_env)
    cloud.base_env.update(LAMINA_ACCESS_KEY=access_key, LAMINA_SECRET_KEY=secret)
    try:
        return cloud.cli(*args, check=check)
    finally:
        cloud.base_env.clear()
        cloud.base_env.update(saved)


def _json(cloud: Cloud, *args: str) -> object:
    return json.loads(cloud.cli("--json", *args).stdout)


def test_channels_and_appliances_by_name(cloud: Cloud, channel: tuple[str, str]) -> None:
    url, token = channel
    added = cloud.cli("channel", "add", url, "--key", token).stdout
    assert f"subscribed to {TITLE}" in added and "legacy-wiki" in added

    # Channels: listed by title with who subscribed; shown by title, URL or id.
    listed = cloud.cli("channel", "list").stdout.splitlines()
    assert listed[0].split()[:3] == ["TITLE", "URL", "APPLIANCES"]
    assert listed[1].split()[:4] == [TITLE, url, "2", "admin"]
    assert not UUID.search("\n".join(listed))
    shown = cloud.cli("channel", "show", TITLE).stdout
    assert "legacy-wiki" in shown and "1.1.0-0" in shown and url in shown
    by_url = _json(cloud, "channel", "show", url)
    assert isinstance(by_url, dict)
    assert [i["version"] for i in by_url["items"]] == ["1.0.0-0", "1.1.0-0"]
    assert _json(cloud, "channel", "show", by_url["id"])["title"] == TITLE  # type: ignore[index]
    missing = cloud.cli("channel", "show", "nope", check=False)
    assert missing.returncode == 1 and "no channel 'nope'" in missing.stderr
    assert "no new or updated" in cloud.cli("channel", "refresh", TITLE).stdout

    # The catalog names its channel by title; ids only in --json.
    table = cloud.cli("appliance", "list").stdout.splitlines()
    assert table[0].split() == [
        "NAME", "VERSION", "KIND", "LABEL", "INSTALLED", "STATUS", "CHANNEL",
    ]  # fmt: skip
    assert table[1].split()[:2] == ["legacy-wiki", "1.0.0-0"] and table[1].endswith(TITLE)
    assert not UUID.search("\n".join(table))
    rows = _json(cloud, "appliance", "list")
    assert isinstance(rows, list) and rows[0]["channel"] == by_url["id"]

    # Show: versions, variables with type, default, required, description; ports; hardware;
    # webpanel.
    out = cloud.cli("appliance", "show", "legacy-wiki").stdout
    assert re.search(r"^version\s+1\.1\.0-0$", out, re.MULTILINE), out
    assert re.search(r"^webpanel\s+/admin$", out, re.MULTILINE), out
    assert re.search(r"^domain\s+hostname\s+-\s+yes\s+Its site's name$", out, re.MULTILINE), out
    assert re.search(r"^port\s+int\s+80\s+no$", out, re.MULTILINE), out
    ports = out[out.index("\nports:\n") :].splitlines()[2:]
    assert ports[0].split() == ["PORT", "PROTOCOL", "VARIABLE", "NAME", "DESCRIPTION"], out
    assert ports[1].split() == ["80", "tcp", "port", "http", "The", "wiki"], out
    assert ports[2].split() == ["8443", "udp", "-", "-"], out
    data = _json(cloud, "appliance", "show", "legacy-wiki", "--version", "1.0.0-0")
    assert isinstance(data, dict)
    assert data["version"] == "1.0.0-0" and data["installed"] is False
    assert [v["version"] for v in data["versions"]] == ["1.1.0-0", "1.0.0-0"]
    assert data["variables"][0] == {
        "name": "domain",
        "type": "hostname",
        "default": None,
        "required": True,
        "description": "Its site's name",
    }
    assert data["ports"] == [
        {"number": 80, "protocol": "tcp", "variable": "port", "name": "http",
         "description": "The wiki"},
        {"number": 8443, "protocol": "udp", "variable": None, "name": None, "description": ""},
    ]  # fmt: skip
    assert data["hardware"]["cpus"] == 2 and data["hardware"]["memory_mib"] == 128
    assert data["webpanel"] == "/admin" and data["definition_error"] is None
    typo = cloud.cli("appliance", "show", "legacy-wki", check=False)
    assert typo.returncode == 1
    assert "no such appliance 'legacy-wki' (did you mean legacy-wiki?)" in typo.stderr
    nover = cloud.cli("appliance", "show", "legacy-wiki", "--version", "9", check=False)
    assert nover.returncode == 1 and "no version 9 of appliance legacy-wiki" in nover.stderr


def test_deploy_installs_first_and_remove_takes_names(
    cloud: Cloud, channel: tuple[str, str]
) -> None:
    url, token = channel
    cloud.cli("channel", "add", url, "--key", token)
    deploy = ("appliance", "deploy", "--name", "w1", "--var", "domain=wiki.example.org")

    typo = cloud.cli(*deploy, "legacy-wki", check=False)
    assert typo.returncode == 1, typo.stderr
    assert "no such appliance 'legacy-wki' (did you mean legacy-wiki?)" in typo.stderr
    mistyped = cloud.cli("appliance", "install", "legacy-wki", check=False)
    assert mistyped.returncode == 1
    assert "no such appliance 'legacy-wki' (did you mean legacy-wiki?)" in mistyped.stderr
    refused = cloud.cli(*deploy, "legacy-wiki", "--no-install", check=False)
    assert refused.returncode == 1
    assert "legacy-wiki is not installed" in refused.stderr
    assert "lamina appliance install legacy-wiki" in refused.stderr
    assert _json(cloud, "appliance", "list", "--installed") == []
    # A member may deploy but not install: told whom to ask, and what they must run.
    with cloud.client() as admin:
        secret = admin.add_user("bob", "bob@example.org")["key"]["secret"]
    member = _as(cloud, "bob", secret, *deploy, "legacy-wiki", check=False)
    assert member.returncode == 1, member.stderr
    assert "only an administrator may install it: ask one to run lamina appliance install " in (
        member.stderr
    )

    # Not installed: installed first (the older version, as asked), then deployed.
    done = cloud.cli(*deploy, "legacy-wiki", "--version", "1.0.0-0")
    assert "legacy-wiki:1.0.0-0 is not installed: installing it first" in done.stderr
    assert re.search(r"^status\s+running$", done.stdout, re.MULTILINE), done.stdout
    installed = _json(cloud, "appliance", "list", "--installed")
    assert [(a["name"], a["version"]) for a in installed] == [("legacy-wiki", "1.0.0-0")]  # type: ignore[index,union-attr]
    cloud.cli("appliance", "install", "legacy-wiki:1.1.0-0")

    # Two versions installed: a name alone is ambiguous; --version picks one.
    both = cloud.cli("appliance", "remove", "legacy-wiki", check=False)
    assert both.returncode == 2, both.stderr
    assert "several versions of appliance legacy-wiki are installed (1.0.0-0, 1.1.0-0)" in (
        both.stderr
    )
    assert (
        "removed legacy-wiki 1.1.0-0"
        in cloud.cli("appliance", "remove", "legacy-wiki", "--version", "1.1.0-0").stdout
    )
    used = cloud.cli("appliance", "remove", "legacy-wiki", check=False)
    assert used.returncode == 1 and "used by instances w1" in used.stderr
    kept = cloud.cli("channel", "remove", TITLE, check=False)
    assert kept.returncode == 1 and f"channel {TITLE} still has installed" in kept.stderr

    # Jobs name their targets; filters are by name, kind and status (choices).
    jobs = cloud.cli("job", "list").stdout.splitlines()
    assert jobs[0].split() == ["CREATED_AT", "KIND", "TARGET", "STATUS", "PROGRESS", "ERROR"]
    assert any(
        line.split()[2:6] == ["instance.create", "instance", "w1", "succeeded"] for line in jobs
    ), jobs
    assert not UUID.search("\n".join(jobs))
    installs = cloud.cli("job", "list", "--kind", "appliance.install").stdout.splitlines()
    assert len(installs) == 3 and all("appliance legacy-wiki" in r for r in installs[1:])
    assert len(cloud.cli("job", "list", "--limit", "1").stdout.splitlines()) == 2
    mine = _json(cloud, "job", "list", "--target", "w1")
    assert isinstance(mine, list) and [j["kind"] for j in mine] == ["instance.create"]
    assert mine[0]["target_name"] == "w1" and UUID.fullmatch(mine[0]["target_id"])
    assert _json(cloud, "job", "list", "--target", mine[0]["target_id"]) == mine
    shown = cloud.cli("job", "show", mine[0]["id"]).stdout
    assert re.search(r"^target_name\s+w1$", shown, re.MULTILINE), shown
    assert re.search(r"^owner_key\s+admin$", shown, re.MULTILINE), shown
    bad = cloud.cli("job", "list", "--status", "faild", check=False)
    assert (
        bad.returncode == 2
        and "'faild' is not one of" in bad.stderr
        and "rolled_back" in (bad.stderr)
    )
    assert cloud.cli("job", "list", "--kind", "instance.creat", check=False).returncode == 2
    nobody = cloud.cli("job", "list", "--target", "nope", check=False)
    assert nobody.returncode == 1 and "no job is about a target named 'nope'" in nobody.stderr

    # A deleted instance's jobs still name it.
    with cloud.client() as client:
        gone = client.delete_instance("w1")
        assert client.wait_job(gone["id"], timeout=60)["status"] == "succeeded"
    kinds = [j["kind"] for j in _json(cloud, "job", "list", "--target", "w1")]  # type: ignore[union-attr,index]
    assert kinds == ["instance.delete", "instance.create"]

    assert "removed legacy-wiki 1.0.0-0" in cloud.cli("appliance", "remove", "legacy-wiki").stdout
    again = cloud.cli("appliance", "remove", "legacy-wiki", check=False)
    assert again.returncode == 1 and "legacy-wiki is not installed" in again.stderr
    assert f"removed channel {TITLE}" in cloud.cli("channel", "remove", url).stdout


def test_every_catalog_command_explains_itself(cloud: Cloud) -> None:
    for group in ("appliance", "channel", "job"):
        out = cloud.cli(group, "--help").stdout
        assert re.search(r"^\s+list\b", out, re.MULTILINE), out
        assert re.search(r"^\s+show\b", out, re.MULTILINE), out
    for command in (
        ("appliance", "list"),
        ("appliance", "show"),
        ("appliance", "deploy"),
        ("appliance", "remove"),
        ("channel", "show"),
        ("channel", "remove"),
        ("job", "list"),
        ("job", "show"),
    ):
        out = cloud.cli(*command, "--help").stdout
        assert re.search(r"Examples:\n\s+lamina ", out), (command, out)
        assert "--json" in out, (command, out)
