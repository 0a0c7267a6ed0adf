"""Lamina on a real PostgreSQL: the whole instance path, and two managers sharing one
database without running a step twice or overfilling a host."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from clouds import add_host
from harness import Cloud, free_port

from lamina.identity.signing import LaminaAuth

pytestmark = pytest.mark.integration


def test_two_managers_share_jobs_and_capacity(
    make_cloud: Callable[..., Cloud], pg_url: str, kernel: str
) -> None:
    cloud = make_cloud(pg_url)
    cloud.start_manager()
    second_port = free_port()
    cloud.start_manager(port=second_port)
    add_host(cloud, "h1")
    urls = [cloud.url, f"http://127.0.0.1:{second_port}"]

    # The test driver's host has 3072 MiB less a 128 MiB reserve: room for exactly five
    # 512 MiB instances, whichever manager places them.
    def create(i: int) -> httpx.Response:
        body = {"name": f"vm{i}", "kernel": kernel, "memory_mib": 512}
        return httpx.post(f"{urls[i % 2]}/instances", json=body, timeout=30, auth=cloud.auth)

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(create, range(10)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * 5 + [503] * 5, [r.text for r in responses]

    client = cloud.client()
    jobs = [r.json()["job"]["id"] for r in responses if r.status_code == 202]
    finished = [client.wait_job(j, timeout=60) for j in jobs]
    assert all(j["status"] == "succeeded" for j in finished)
    assert all(s["attempts"] == 1 for j in finished for s in j["steps"])
    assert len(client.instances(status="running")) == 5
    assert client.host("h1")["memory_used_mib"] == 2560


def test_instance_lifecycle_on_postgres(
    make_cloud: Callable[..., Cloud], pg_url: str, kernel: str
) -> None:
    cloud = make_cloud(pg_url)
    cloud.start_manager()
    add_host(cloud, "h1")
    client = cloud.client()
    result = client.create_instance(name="pg", kernel=kernel, memory_mib=64)
    assert client.wait_job(result["job"]["id"], timeout=60)["status"] == "succeeded"
    for action, status in (("pause", "paused"), ("resume", "running"), ("stop", "stopped")):
        assert client.wait_job(client.instance_action("pg", action)["id"])["status"] == "succeeded"
        assert client.instance("pg")["status"] == status
    assert client.wait_job(client.delete_instance("pg")["id"])["status"] == "succeeded"
    assert client.instances() == []


def test_quotas_hold_across_two_managers(
    make_cloud: Callable[..., Cloud], pg_url: str, kernel: str
) -> None:
    cloud = make_cloud(pg_url)
    cloud.start_manager()
    second_port = free_port()
    cloud.start_manager(port=second_port)
    add_host(cloud, "h1")
    secret = cloud.client().add_user("greedy", "g@example.com", quotas={"vcpus": 4})["key"][
        "secret"
    ]
    auth = LaminaAuth("greedy", secret)
    urls = [cloud.url, f"http://127.0.0.1:{second_port}"]
    image = cloud.boot_image(kernel)  # a member boots from images, not host paths

    def create(i: int) -> httpx.Response:
        body = {"name": f"g{i}", "kernel": image, "memory_mib": 64, "vcpus": 2}
        return httpx.post(f"{urls[i % 2]}/instances", json=body, timeout=30, auth=auth)

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(r.status_code for r in pool.map(create, range(8)))
    assert codes == [202] * 2 + [413] * 6  # 4 vCPUs = two instances of 2, never three
