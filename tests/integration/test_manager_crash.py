"""A manager killed with SIGKILL in the middle of a job: the job is resumed when a manager
starts again, the interrupted step is run again, and the finished ones are not."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest
from clouds import add_host
from harness import Cloud, slow_mirror, wait_until

pytestmark = pytest.mark.integration
SIZE = 3 * 1024 * 1024
RATE = 1024 * 1024  # bytes per second: the download takes about 3 s


@pytest.fixture
def mirror() -> Iterator[str]:
    with slow_mirror(b"k" * SIZE, RATE) as url:
        yield url


def test_a_job_killed_mid_way_is_resumed(make_cloud: Callable[..., Cloud], mirror: str) -> None:
    cloud = make_cloud()
    manager = cloud.start_manager()
    add_host(cloud, "h1")
    client = cloud.client()
    result = client.create_instance(name="phoenix", kernel=mirror, memory_mib=64)
    job_id = result["job"]["id"]

    def fetching() -> bool:
        step = client.job(job_id)["steps"][0]
        return bool(step["status"] == "running")

    wait_until(fetching, 20, "the download step to start")
    # The job shows the agent's byte counts and rate while the kernel downloads.
    progress = wait_until(lambda: (j := client.job(job_id))["bytes_done"] and j, 10, "bytes")
    assert progress["bytes_total"] == SIZE and progress["rate"] > 0
    assert 0 < progress["progress"] < 0.5
    manager.kill(signal.SIGKILL)
    assert not manager.alive()

    cloud.start_manager()
    job = client.wait_job(job_id, timeout=90)
    assert job["status"] == "succeeded", job
    assert job["runs"] == 2
    fetch = job["steps"][0]
    assert fetch["attempts"] == 2 and fetch["message"] == "resumed after an interruption"
    assert all(step["attempts"] == 1 for step in job["steps"][1:])
    assert client.instance("phoenix")["status"] == "running"
