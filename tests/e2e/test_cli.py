"""The `lamina` command line against a running Lamina (manager + agent processes)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from harness import Cloud, slow_mirror, wait_until

from lamina.identity.ca import CertificateAuthority
from lamina.wire.pool import AgentPool
from lamina.wire.protocol import GuestDefinition

pytestmark = pytest.mark.e2e


def test_instances_from_the_command_line(cloud: Cloud, kernel: str) -> None:
    out = cloud.cli("instance", "create", "cli1", "--kernel", kernel, "--memory", "64").stdout
    assert "status" in out and "running" in out
    table = cloud.cli("instance", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "ID", "STATUS", "HOST", "VCPUS", "MEMORY_MIB"]
    assert table[1].split()[0] == "cli1" and table[1].split()[2] == "running"
    rows = json.loads(cloud.cli("instance", "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["cli1"]
    shown = json.loads(cloud.cli("--json", "instance", "show", "cli1").stdout)
    assert shown["host"] == "h1" and shown["memory_mib"] == 64

    assert "stop: succeeded" in cloud.cli("instance", "stop", "cli1", "--force").stdout
    job_line = cloud.cli("instance", "start", "cli1").stdout
    job_id = job_line.split("job ")[1].rstrip(")\n")
    shown_job = cloud.cli("job", "show", job_id, "--wait").stdout
    assert "succeeded" in shown_job and "start" in shown_job
    assert job_id in cloud.cli("--json", "job", "list").stdout
    hosts = cloud.cli("host", "list").stdout
    assert "h1" in hosts and "up" in hosts
    assert "delete: succeeded" in cloud.cli("instance", "delete", "cli1", "--yes").stdout


def test_errors_are_one_clear_line(cloud: Cloud) -> None:
    missing = cloud.cli("instance", "show", "nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr == "error: instance 'nope' does not exist\n"
    bad = cloud.cli("instance", "create", "Bad_Name", "--kernel", "/k", check=False)
    assert bad.returncode == 2 and "lower-case" in bad.stderr


def test_config_show(cloud: Cloud) -> None:
    out = cloud.cli("config", "show").stdout
    assert f"manager url    {cloud.url}" in out
    assert f"data dir       {cloud.root / 'manager'}" in out
    assert f"database       sqlite:///{cloud.root / 'manager' / 'lamina.db'}" in out
    data = json.loads(cloud.cli("config", "show", "--json").stdout)
    assert data["server"]["manager"]["port"] == cloud.port


def test_reconcile_finds_and_fixes_an_orphan_guest(cloud: Cloud) -> None:
    assert "no differences" in cloud.cli("reconcile").stdout
    pool = AgentPool(CertificateAuthority(cloud.root / "manager" / "ca").client_files())
    agent = pool.for_address(
        json.loads(cloud.cli("--json", "host", "show", "h1").stdout)["address"]
    )
    orphan = f"lamina-{uuid.uuid4()}"
    agent.define(orphan, GuestDefinition(vcpus=1, memory_mib=64))
    agent.act(orphan, "start")
    found = json.loads(cloud.cli("--json", "reconcile").stdout)
    ident = found[0]["id"]
    assert found == [
        {
            "id": ident,
            "kind": "orphan_guest",
            "resource": f"guest {orphan} on host h1",
            "database": "no record",
            "backend": "running",
            "fix": "destroy and undefine the guest and remove its files",
        }
    ]
    refused = cloud.cli("reconcile", "--fix", check=False)
    assert refused.returncode != 0 and "name the differences to fix" in refused.stderr
    assert orphan in [g.name for g in agent.guests()]
    fixed = cloud.cli("reconcile", "--fix", ident).stdout
    assert "fixed" in fixed and ident in fixed
    assert orphan not in [g.name for g in agent.guests()]
    assert "no differences" in cloud.cli("reconcile").stdout
    pool.close()


@pytest.fixture
def slow_url() -> Iterator[str]:
    with slow_mirror(b"x" * 1_000_000, 400) as url:  # takes 40 min: stuck by any measure
        yield url


def test_stuck_jobs_are_listed_with_their_steps(make_cloud, slow_url: str) -> None:  # type: ignore[no-untyped-def]
    from clouds import add_host

    c = make_cloud(LAMINA_JOBS__STUCK_FRACTION="1.0")  # every unfinished job counts as stuck
    c.start_manager()
    add_host(c, "h1")
    assert c.cli("job", "list", "--stuck").stdout.strip() == "(none)"
    c.cli("instance", "create", "slow", "--kernel", slow_url, "--no-wait")
    out = wait_until(
        lambda: (
            (r := c.cli("job", "list", "--stuck").stdout)
            and "fetch_boot_files" in r
            and "running" in r
            and r
        ),
        20,
        "a stuck job",
    )
    assert "instance.create" in out
