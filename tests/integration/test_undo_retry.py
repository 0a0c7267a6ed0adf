"""An undo that failed because its host could not be reached is retried by itself when the
host comes back (issue 12, item 12), with a real manager, agent and tgt.

The volume server's agent is killed while exporting a volume: its ``tgtadm`` (a wrapper on
the agent's PATH) makes and binds the target, then hangs, and the test kills the agent's
process group. The target stays in tgtd, the export's undo cannot reach the agent, so the
job fails with its rollback pending and the volume is ``error``. When the agent is started
again, nothing else is done: the manager withdraws the target and the volume is
``available``. The retry delay is set far beyond the test, so it is the host coming back that
triggers it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from clouds import add_host
from harness import Cloud, wait_until

from lamina.agent.tgt import parse_targets

pytestmark = pytest.mark.integration
MiB = 1024 * 1024

WRAPPER = """#!/bin/bash
# tgtadm, except that an export's last command (bind) hangs once it is done: the agent is
# killed "while exporting".
if [[ " $* " == *" --op bind "* ]]; then
    /usr/sbin/tgtadm "$@"
    touch "{bound}"
    exec sleep 300
fi
exec /usr/sbin/tgtadm "$@"
"""


def targets_under(root: Path) -> list[int]:
    shown = subprocess.run(
        ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return [
        t.tid
        for t in parse_targets(shown)
        if any(Path(p).is_relative_to(root) for p in t.luns.values())
    ]


def test_an_export_undo_is_retried_when_the_agent_comes_back(
    make_cloud: Callable[..., Cloud], tmp_path: Path
) -> None:
    if not Path("/usr/sbin/tgtadm").exists():
        pytest.skip("needs tgt (scripts/start-tgtd.sh)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    bound = tmp_path / "bound"
    wrapper = bin_dir / "tgtadm"
    wrapper.write_text(WRAPPER.format(bound=bound))
    wrapper.chmod(0o755)

    cloud = make_cloud(LAMINA_JOBS__UNDO_RETRY_SECONDS="600")
    cloud.start_manager()
    port = add_host(cloud, "h1", PATH=f"{bin_dir}:{os.environ['PATH']}")
    agent = cloud.agents[-1]
    client = cloud.client()
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not really a kernel" * 1000)
    made = client.create_instance(name="web", kernel=str(kernel), memory_mib=64)
    assert client.wait_job(made["job"]["id"], timeout=60)["status"] == "succeeded"
    created = client.create_volume(size_bytes=16 * MiB)
    assert client.wait_job(created["job"]["id"], timeout=60)["status"] == "succeeded"
    volume_id = created["volume"]["id"]

    job_id = client.attach_volume(volume_id, "web", "vdb")["job"]["id"]
    wait_until(bound.exists, 60, "the export's target to be bound")
    assert agent.proc is not None
    os.killpg(agent.proc.pid, signal.SIGKILL)  # the agent and its hanging tgtadm
    agent.proc.wait(10)
    [tid] = targets_under(tmp_path)

    def finished() -> dict[str, object] | None:
        job = client.job(job_id)
        return job if job["status"] in ("failed", "rolled_back", "succeeded") else None

    job = wait_until(finished, 120, "the attach to fail")
    assert job["status"] == "failed" and "rollback pending" in job["error"], job
    assert job["rollback"] == "pending", job
    assert [s["status"] for s in job["steps"]] == ["undo_pending", "pending", "pending"], job
    vol = client.volume(volume_id)
    assert vol["status"] == "error", vol
    assert targets_under(tmp_path) == [tid]  # still exported

    wait_until(lambda: client.host("h1")["status"] == "down", 30, "h1 down")
    cloud.start_agent("h1", None, port)  # already enrolled; the real tgtadm again

    def rolled_back() -> dict[str, object] | None:
        job = client.job(job_id)
        return job if job["status"] == "rolled_back" else None

    job = wait_until(rolled_back, 60, "the pending undo to run by itself")
    assert job["rollback"] == "done" and "rollback" not in str(job["error"]), job
    assert [s["status"] for s in job["steps"]] == ["undone", "pending", "pending"], job
    assert targets_under(tmp_path) == []
    vol = client.volume(volume_id)
    assert vol["status"] == "available" and vol["attachment"] is None, vol

    # The volume is usable again (the test driver's guest did not survive its agent).
    deleted = client.delete_volume(volume_id)
    assert client.wait_job(deleted["job"]["id"], timeout=60)["status"] == "succeeded"
