"""Two Lamina deployments on one libvirtd: reconcile of one never touches the other's guests,
and ``--fix`` applies only what its dry run showed (issue 12, item 11).

Each deployment is its own manager (its own data directory and database, so its own
deployment id) with its own agent, both on the same libvirtd (``qemu:///system``, or
``$LAMINA_TEST_LIBVIRT_URI``, e.g. ``qemu:///session`` for a libvirtd of one's own). The
test touches only guests its two deployments made.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clouds import add_host
from harness import ROOT, Cloud, wait_until

from lamina.errors import GuestNotFound
from lamina.identity.ca import CertificateAuthority
from lamina.wire.client import AgentClient
from lamina.wire.pool import AgentPool
from lamina.wire.protocol import GuestDefinition

pytestmark = pytest.mark.integration
URI = os.environ.get("LAMINA_TEST_LIBVIRT_URI", "qemu:///system")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-guest.sh"), str(out)], check=True)
    return out


def domstate(name: str) -> str:
    result = subprocess.run(
        ["virsh", "-c", URI, "domstate", name], capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip() if result.returncode == 0 else "absent"


@pytest.fixture
def agent_of() -> Iterator[Callable[[Cloud, str], AgentClient]]:
    """A cloud's agent as that cloud's manager reaches it (its client certificate), naming
    no deployment: the agent tags what it makes with the one its manager gave it."""
    pools: list[AgentPool] = []

    def agent(cloud: Cloud, host: str) -> AgentClient:
        pool = AgentPool(CertificateAuthority(cloud.root / "manager" / "ca").client_files())
        pools.append(pool)
        return pool.for_address(cloud.client().host(host)["address"])

    yield agent
    for pool in pools:
        pool.close()


def names(diffs: list[dict[str, Any]]) -> str:
    return " ".join(str(d["resource"]) for d in diffs)


def test_reconcile_fixes_only_its_own_deployment_and_only_what_it_showed(
    make_cloud: Callable[..., Cloud],
    sample: Path,
    agent_of: Callable[[Cloud, str], AgentClient],
) -> None:
    # A reconciles with no grace period: only the deployment tags protect B's guest.
    a = make_cloud(LAMINA_RECONCILE__GRACE_SECONDS="0")
    b = make_cloud()
    a.start_manager()
    b.start_manager()
    add_host(a, "ha", uri=URI)
    add_host(b, "hb", uri=URI)
    kernel = sample / "vmlinux" if (sample / "vmlinux").exists() else sample / "vmlinuz"

    # B's guest, paused: the one the issue saw destroyed.
    bclient = b.client()
    made = bclient.create_instance(
        name="theirs",
        kernel=str(kernel),
        initrd=str(sample / "initrd.img"),
        cmdline="console=ttyS0",
        memory_mib=96,
    )
    theirs = f"lamina-{made['instance']['id']}"
    try:
        assert bclient.wait_job(made["job"]["id"], timeout=180)["status"] == "succeeded"
        paused = bclient.wait_job(bclient.instance_action("theirs", "pause")["id"], timeout=60)
        assert paused["status"] == "succeeded" and domstate(theirs) == "paused"

        # A's own orphan, shown by its dry run...
        agent = agent_of(a, "ha")
        shown_orphan = f"lamina-{uuid.uuid4()}"
        agent.define(shown_orphan, GuestDefinition(vcpus=1, memory_mib=64))
        aclient = a.client()
        dry = aclient.reconcile()
        # ...and one made after it.
        late_orphan = f"lamina-{uuid.uuid4()}"
        agent.define(late_orphan, GuestDefinition(vcpus=1, memory_mib=64))

        fixed = aclient.reconcile(fix=[str(d.get("id", "")) for d in dry])

        # B's paused guest is untouched, and so is the guest the dry run did not show.
        assert domstate(theirs) == "paused", fixed
        assert bclient.instance("theirs")["status"] == "paused"
        assert late_orphan in {g.name for g in agent.guests()}, fixed
        # What was shown was fixed.
        assert shown_orphan not in {g.name for g in agent.guests()}
        assert [(d["kind"], d["resource"], d["outcome"]) for d in fixed] == [
            ("orphan_guest", f"guest {shown_orphan} on host ha", "fixed")
        ]
        # B's guest was never even listed by A: it is another deployment's.
        assert theirs not in names(dry) and theirs not in names(aclient.reconcile())

        # Now shown, the late orphan has its id; an id that no longer matches is refused.
        [late] = [d for d in aclient.reconcile() if late_orphan in d["resource"]]
        stale = aclient.reconcile(fix=[dry[0]["id"]])
        assert stale[0]["outcome"].startswith("not applied"), stale
        out = a.cli("reconcile", "--fix", late["id"]).stdout
        assert "fixed" in out and late["id"] in out
        assert late_orphan not in {g.name for g in agent.guests()}
        assert aclient.reconcile() == []
        assert domstate(theirs) == "paused"
    finally:
        for name in ("shown_orphan", "late_orphan"):
            guest = locals().get(name)
            if guest:
                try:
                    agent_of(a, "ha").undefine(guest)
                except GuestNotFound:
                    pass
        job = bclient.wait_job(bclient.delete_instance("theirs")["id"], timeout=120)
    assert job["status"] == "succeeded"
    wait_until(lambda: domstate(theirs) == "absent", 30, f"{theirs} gone")
