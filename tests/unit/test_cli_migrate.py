"""``lamina instance migrate`` and ``lamina host evacuate`` without a manager: what they ask
the client for, what they print, and the contradictory ``--live --cold`` refused.

Written by helper ``sched`` beside the ``migrate`` branch: skipped until its commands are
merged."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from lamina.cli.context import Context
from lamina.cli.host import host
from lamina.cli.instance import instance

pytestmark = pytest.mark.skipif(
    "migrate" not in instance.commands or "evacuate" not in host.commands,
    reason="the migrate branch's commands are not merged",
)

JOB = {"id": "j-1", "kind": "instance.migrate", "status": "queued", "error": None}


class FakeClient:
    """Records what the commands ask; answers jobs as given."""

    def __init__(self, finished: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.finished = finished or {}

    def migrate_instance(self, ref: str, host: str | None = None, mode: str = "auto") -> Any:
        self.calls.append(("migrate", ref, host, mode))
        return dict(JOB)

    def evacuate_host(self, ref: str) -> Any:
        self.calls.append(("evacuate", ref))
        return dict(JOB, kind="host.evacuate")

    def wait_job(self, job_id: str, on_progress: Any = None, **_: Any) -> Any:
        return self.finished


def invoke(client: FakeClient, group: Any, *args: str, as_json: bool = False) -> Any:
    obj = Context("http://manager.invalid", as_json)
    obj._client = client  # type: ignore[assignment]
    return CliRunner().invoke(group, list(args), obj=obj)


def test_the_mode_and_host_reach_the_client() -> None:
    for flags, mode in (([], "auto"), (["--live"], "live"), (["--cold"], "cold")):
        client = FakeClient()
        result = invoke(client, instance, "migrate", "web", "--host", "h2", "--no-wait", *flags)
        assert result.exit_code == 0, result.output
        assert client.calls == [("migrate", "web", "h2", mode)]
        assert "j-1" in result.output


def test_live_and_cold_together_are_refused() -> None:
    client = FakeClient()
    result = invoke(client, instance, "migrate", "web", "--live", "--cold")
    assert result.exit_code == 2, result.output
    assert "--live" in result.output and "--cold" in result.output
    assert client.calls == []  # nothing asked of the manager


def test_a_finished_move_prints_where_and_its_figures() -> None:
    done = dict(JOB, status="succeeded", result={
        "host": "h2", "seconds": 3.25, "downtime_ms": 120, "memory_bytes": 256 * 2**20,
        "disk_bytes": 2**20, "layer_bytes": 0,
    })  # fmt: skip
    result = invoke(FakeClient(done), instance, "migrate", "web")
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("web now on h2: 3.2 s, downtime 120 ms, memory 256")


def test_a_failed_move_fails_the_command_with_its_reason() -> None:
    failed = dict(JOB, status="failed", error="the migration did not converge within 300s")
    result = invoke(FakeClient(failed), instance, "migrate", "web")
    assert result.exit_code != 0
    assert "did not converge" in str(result.exception) + result.output


def test_evacuate_prints_what_moved_and_what_did_not() -> None:
    report = [
        {"instance": "i-1", "name": "web", "outcome": "moved", "mode": "live", "host": "h2"},
        {"instance": "i-2", "name": "db", "outcome": "not moved",
         "reason": "host 'h3' has no room for 1 vCPU(s) and 4096 MiB"},
    ]  # fmt: skip
    done = dict(JOB, kind="host.evacuate", status="succeeded",
                result={"report": report, "summary": "1 of 2 instance(s) moved"})  # fmt: skip
    client = FakeClient(done)
    result = invoke(client, host, "evacuate", "h1")
    assert result.exit_code == 0, result.output
    assert client.calls == [("evacuate", "h1")]
    lines = result.output.splitlines()
    assert lines[0].split() == ["INSTANCE", "OUTCOME", "MODE", "HOST", "REASON"]
    assert lines[1].split() == ["web", "moved", "live", "h2"]
    assert lines[2].startswith("db") and "has no room" in lines[2]
    assert lines[-1] == "1 of 2 instance(s) moved"
