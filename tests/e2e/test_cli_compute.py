"""``lamina instance``, ``lamina network`` and ``lamina dns`` as a person uses them, against a
running manager and agent (libvirt's test driver): names beside ids, choices and ranges
checked by the command line, contradictory flags refused, a running instance not deleted by
accident, a console log that reads as the guest printed it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from typing import Any

import click
import pytest
from harness import LAMINA, ROOT, Cloud

from lamina.cli.main import client_commands

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
ASKFIRST = "Please press Enter to activate this console."


def run(
    cloud: Cloud, *args: str, stdin: Any = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    """``lamina ARGS`` with no terminal on its standard input (as in a script or CI)."""
    return subprocess.run(
        LAMINA + list(args), env=cloud.base_env, stdin=stdin, capture_output=True, text=True,
        timeout=120, cwd=ROOT,
    )  # fmt: skip


def on_terminal(cloud: Cloud, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``lamina ARGS`` with a terminal on its standard input, answering ``answer``."""
    leader, follower = pty.openpty()
    try:
        os.write(leader, answer.encode())
        return run(cloud, *args, stdin=follower)
    finally:
        os.close(follower)
        os.close(leader)


def create(cloud: Cloud, name: str, kernel: str, *more: str) -> dict[str, Any]:
    out = cloud.cli("--json", "instance", "create", name, "--kernel", kernel, "--memory", "64",
                    *more).stdout  # fmt: skip
    return dict(json.loads(out))


def attach_volume(cloud: Cloud, instance: str, size: int) -> str:
    with cloud.client() as client:
        made = client.create_volume(size_bytes=size)
        assert client.wait_job(made["job"]["id"], timeout=120)["status"] == "succeeded"
        vid = str(made["volume"]["id"])
        job = client.attach_volume(vid, instance)["job"]
        assert client.wait_job(job["id"], timeout=120)["status"] == "succeeded"
    return vid


def shown(cloud: Cloud, kind: str, ref: str) -> dict[str, Any]:
    """An instance or volume as the API shows it now."""
    with cloud.client() as client:
        return dict(client.instance(ref) if kind == "instance" else client.volume(ref))


# -- names beside ids ------------------------------------------------------------------------


def test_instance_show_names_its_owner_and_lists_its_volumes(cloud: Cloud, kernel: str) -> None:
    vm = create(cloud, "shown", kernel, "--disk-size", "8")
    vid = attach_volume(cloud, vm["id"], 16 * MiB)
    admin_key = cloud.keys()[0]

    text = cloud.cli("instance", "show", "shown").stdout
    lines = text.splitlines()
    assert any(line.split() == ["owner", admin_key, f"({vm['owner']})"] for line in lines), text
    assert f"volume    vdb: {vid} 16.0 MiB (attached)" in lines, text
    assert not any(line.startswith("owner_name") for line in lines)

    data = json.loads(cloud.cli("--json", "instance", "show", "shown").stdout)
    assert data["owner_name"] == admin_key and data["appliance"] is None
    assert data["volumes"] == [
        {"id": vid, "name": data["volumes"][0]["name"], "device": "vdb", "size_bytes": 16 * MiB,
         "status": "attached"}
    ]  # fmt: skip
    detail = json.loads(cloud.cli("--json", "instance", "list", "--detail").stdout)
    assert detail[0]["volumes"][0]["id"] == vid and detail[0]["owner_name"] == admin_key


# -- choices and ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag", "allowed"),
    [
        (["instance", "list", "--status", "runing"], "--status", "'running'"),
        (["instance", "expose", "web", "--port", "99999"], "--port", "1<=x<=65535"),
        (["instance", "expose", "web", "--port", "80", "--host-port", "0"], "--host-port",
         "1<=x<=65535"),
        (["instance", "create", "web", "--kernel", "k", "--memory", "16"], "--memory", "32<=x"),
        (["instance", "create", "web", "--kernel", "k", "--vcpus", "0"], "--vcpus", "1<=x<=64"),
        (["instance", "create", "web", "--kernel", "k", "--disk-size", "0"], "--disk-size",
         "1<=x"),
        (["network", "create", "lan", "--cidr", "10.9.0.0/24", "--vlan", "5000"], "--vlan",
         "1<=x<=4094"),
        (["instance", "update", "web", "--visibility", "shared"], "--visibility", "'public'"),
    ],
)  # fmt: skip
def test_choices_and_ranges_are_checked_by_the_command_line(
    cloud: Cloud, args: list[str], flag: str, allowed: str
) -> None:
    result = run(cloud, *args)
    assert result.returncode == 2, result
    assert f"'{flag}'" in result.stderr and allowed in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_misspelt_status_is_refused_by_the_api_too(cloud: Cloud) -> None:
    for path in ("/instances", "/instances/detail"):
        answer = cloud.http.get(path, params={"status": "runing"})
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["code"] == "invalid_request" and "'running'" in body["message"]
        assert [f["field"] for f in body["details"]["fields"]] == ["status"]


def test_an_api_error_names_the_api_field_that_the_flag_maps_to(cloud: Cloud) -> None:
    """The manager names ``memory_mib`` and ``guest_port``; the commands declare which of
    their flags those are, for the CLI's error handler to print the flag."""
    from lamina.cli.flags import flag_names

    instance = _top("instance")
    assert isinstance(instance, click.Group)
    create_flags = flag_names(instance.commands["create"])
    assert create_flags["memory_mib"] == "--memory"
    assert create_flags["disk_size_mib"] == "--disk-size"
    assert create_flags["vcpus"] == "--vcpus"
    assert flag_names(instance.commands["expose"])["guest_port"] == "--port"
    assert flag_names(instance.commands["expose"])["host_port"] == "--host-port"
    # ... and those are the fields the API names.
    answer = cloud.http.post("/instances", json={"name": "x", "memory_mib": 1, "vcpus": 0})
    assert {f["field"] for f in answer.json()["details"]["fields"]} == {"memory_mib", "vcpus"}


# -- contradictory flags ---------------------------------------------------------------------


def test_contradictory_flags_are_refused(cloud: Cloud, kernel: str) -> None:
    both = run(cloud, "network", "create", "lan", "--cidr", "10.9.0.0/24", "--nat", "--isolated")
    assert both.returncode == 2
    assert "--nat" in both.stderr and "--isolated" in both.stderr
    assert cloud.cli("--json", "network", "list").stdout.strip() == "[]"

    grouped = run(cloud, "instance", "create", "g1", "--kernel", kernel, "--no-network",
                  "--group", "web")  # fmt: skip
    assert grouped.returncode == 2
    assert "--group" in grouped.stderr and "--no-network" in grouped.stderr
    assert json.loads(cloud.cli("--json", "instance", "list").stdout) == []

    # The API refuses the same request, naming both fields.
    answer = cloud.http.post(
        "/instances", json={"name": "g1", "kernel": kernel, "networks": [], "group": "web"}
    )
    assert answer.status_code == 400, answer.text
    fields = {f["field"] for f in answer.json()["details"]["fields"]}
    assert fields == {"group", "networks"}

    for args, flags in (
        ([], ("--kernel", "--disk-image")),
        (["--initrd", kernel, "--disk-image", kernel], ("--initrd", "--kernel")),
    ):
        refused = run(cloud, "instance", "create", "nokernel", *args)
        assert refused.returncode == 2, refused
        assert all(flag in refused.stderr for flag in flags), refused.stderr
    for body, fields in (
        ({}, {"kernel", "disk_image"}),
        ({"initrd": kernel, "disk_image": kernel}, {"initrd", "kernel"}),
    ):
        answer = cloud.http.post("/instances", json={"name": "nokernel", **body})
        assert answer.status_code == 400, answer.text
        assert {f["field"] for f in answer.json()["details"]["fields"]} == fields

    create(cloud, "cfg", kernel)
    clash = run(cloud, "instance", "config", "cfg", "site=a", "--unset", "site")
    assert clash.returncode == 2 and "--unset site" in clash.stderr
    assert json.loads(cloud.cli("--json", "instance", "config", "cfg").stdout) == {}

    nothing = run(cloud, "network", "update", "lan")
    assert nothing.returncode == 2 and "--visibility" in nothing.stderr


def test_nat_and_isolated_each_make_their_network(cloud: Cloud) -> None:
    cloud.cli("network", "create", "out", "--cidr", "10.9.0.0/24")
    cloud.cli("network", "create", "in", "--cidr", "10.9.1.0/24", "--isolated")
    cloud.cli("network", "create", "nat", "--cidr", "10.9.2.0/24", "--nat")
    modes = {
        n["name"]: n["mode"] for n in json.loads(cloud.cli("--json", "network", "list").stdout)
    }
    assert modes == {"out": "nat", "in": "isolated", "nat": "nat"}
    assert "isolated" in cloud.cli("network", "show", "in").stdout


# -- deleting a running instance -------------------------------------------------------------


def test_deleting_a_running_instance_asks_first(cloud: Cloud, kernel: str) -> None:
    vm = create(cloud, "busy", kernel, "--disk-size", "8")
    vid = attach_volume(cloud, "busy", 16 * MiB)

    refused = run(cloud, "instance", "delete", "busy")
    assert refused.returncode == 2, refused
    assert "instance busy is running" in refused.stderr
    assert "its root disk (8.0 MiB)" in refused.stderr
    assert f"detaches volume {vid} (vdb, 16.0 MiB; kept)" in refused.stderr
    assert "--yes" in refused.stderr
    assert shown(cloud, "instance", "busy")["status"] == "running"

    # On a terminal it asks; "n" keeps it.
    kept = on_terminal(cloud, "n\n", "instance", "delete", "busy")
    assert kept.returncode == 1, kept
    assert "its root disk (8.0 MiB)" in kept.stderr and "Delete it?" in kept.stderr
    assert shown(cloud, "instance", "busy")["status"] == "running"
    gone = on_terminal(cloud, "y\n", "instance", "delete", "busy")
    assert gone.returncode == 0 and "delete: succeeded" in gone.stdout, gone
    assert shown(cloud, "volume", vid)["status"] == "available"

    create(cloud, "scripted", kernel)
    assert "delete: succeeded" in run(cloud, "instance", "delete", "scripted", "-y").stdout
    create(cloud, "forced", kernel)
    forced = run(cloud, "instance", "delete", "forced", "--force")
    assert forced.returncode == 0 and "delete: succeeded" in forced.stdout, forced
    assert vm["id"] not in cloud.cli("instance", "list").stdout


def test_a_stopped_instance_is_deleted_without_asking(cloud: Cloud, kernel: str) -> None:
    create(cloud, "idle", kernel)
    cloud.cli("instance", "stop", "idle", "--force")
    result = run(cloud, "instance", "delete", "idle")
    assert result.returncode == 0 and "delete: succeeded" in result.stdout, result


# -- the console -----------------------------------------------------------------------------


def test_the_console_shows_the_whole_log_without_busybox_s_prompt(
    cloud: Cloud, kernel: str
) -> None:
    vm = create(cloud, "talky", kernel)
    log = cloud.root / "agent-h1" / "guests" / f"lamina-{vm['id']}" / "console.log"
    # More than the agent's 256 KiB a read, with a line across the boundary; busybox's
    # prompt has no newline: the next line follows it.
    lines = [f"line {n:06d} " + "x" * 100 for n in range(3000)]
    body = "\n".join(lines[:5]) + f"\n\n{ASKFIRST} " + "\n".join(lines[5:]) + "\nlogin: "
    log.write_text(body)
    assert log.stat().st_size > 256 * 1024

    shown = cloud.cli("instance", "console", "talky").stdout
    assert ASKFIRST not in shown
    assert shown == "\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\nlogin: "


# -- verbs, help -----------------------------------------------------------------------------


def _commands(group: click.Group, path: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        found.append((f"{path} {name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{path} {name}")
    return found


def _top(name: str) -> click.Command:
    """A command of ``lamina``, loaded (the group loads each module on first use: its
    ``commands`` holds only those loaded so far)."""
    cli = client_commands()
    command = cli.get_command(click.Context(cli), name)
    assert command is not None, name
    return command


def test_every_command_answers_list_and_show_and_explains_itself() -> None:
    groups = {name: _top(name) for name in ("instance", "network", "dns")}
    for name in ("instance", "network"):
        group = groups[name]
        assert isinstance(group, click.Group)
        assert {"list", "show"} <= set(group.commands), name
    dns = groups["dns"]
    assert isinstance(dns, click.Group)
    record = dns.commands["record"]
    assert isinstance(record, click.Group) and {"list", "show"} <= set(record.commands)

    problems = []
    for name, group in groups.items():
        assert isinstance(group, click.Group)
        for path, command in [(f"lamina {name}", group), *_commands(group, f"lamina {name}")]:
            lines = (command.help or "").rstrip().splitlines()
            tail = [line.strip() for line in lines[-4:]]
            if "Examples:" not in tail:
                problems.append(f"{path}: help does not end with Examples:")
            problems += [
                f"{path} {param.opts[0]}: no help"
                for param in command.params
                if isinstance(param, click.Option) and not param.help
            ]
    assert not problems, "\n".join(problems)


def test_commands_printing_data_mention_json() -> None:
    instance, network = _top("instance"), _top("network")
    assert isinstance(instance, click.Group) and isinstance(network, click.Group)
    for command in ("list", "show", "create", "forwards", "grants", "config"):
        assert "--json" in (instance.commands[command].help or ""), command
    for command in ("list", "show", "create"):
        assert "--json" in (network.commands[command].help or ""), command
