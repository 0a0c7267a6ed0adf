"""An appliance whose files the repository keeps in S3 (a real Swift with s3api) installs,
deploys and boots on a namespace host (its own network and libvirtd, reaching the manager
over the lab's bridge): the host's agent gets its kernel, initramfs and layers through the
manager's blob route (``lamina.compute.fetch``) and may read no host path at all, so nothing
reaches it by a path into the manager's folders. The sample channel's webserv, a layered
guest under QEMU, checked from its console."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator

import pytest
from harness import ROOT, Cloud, wait_until
from hosts import lab, lab_cloud  # noqa: F401 - fixtures
from swift import Swift
from test_layered_appliances import BOOT, Channel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channel]:
    root = tmp_path_factory.mktemp("sample-channel")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-channel.sh"), str(root)], check=True)
    served = Channel(root)
    yield served
    served.server.stop()


def _console(cloud: Cloud, name: str) -> str:
    with cloud.client() as client:
        return str(client.console(name)["data"])


def test_an_appliance_stored_in_s3_deploys_and_boots(
    lab_cloud: Callable[..., Cloud],  # noqa: F811
    channel: Channel,
    s3_server: Swift,
) -> None:
    cloud = lab_cloud(
        hosts=("h2",),
        # The agent may copy no host file at all: whatever it boots came over the wire.
        agent_env={"LAMINA_AGENT__FETCH_ROOTS": "[]"},
        LAMINA_IMAGES__STORES='["file", "s3", "http"]',
        LAMINA_IMAGES__DEFAULT_STORE="s3",
        LAMINA_IMAGES__S3_ENDPOINT=s3_server.endpoint_url,
        LAMINA_IMAGES__S3_BUCKET=f"lamina-{os.urandom(4).hex()}",
        LAMINA_IMAGES__S3_ACCESS_KEY=s3_server.access_key,
        LAMINA_IMAGES__S3_SECRET_KEY=s3_server.secret_key,
    )
    assert (cloud.root / "agent-h2" / "manager.url").read_text().strip().startswith("http://10.")
    cloud.cli("channel", "add", channel.url, "--key", channel.token)
    cloud.cli("appliance", "install", "webserv")
    with cloud.client() as client:
        # The substrate's kernel, initramfs and layer, and the application's layer.
        images = client.images(detail=True)
    assert len(images) == 4 and {i["store"] for i in images} == {"s3"}
    assert {i["location"].split(":")[0] for i in images} == {"s3"}

    web = json.loads(
        cloud.cli(
            "--json", "appliance", "deploy", "webserv", "--name", "web1",
            "--var", "domain=www.example.org", "--var", "port=8080",
        ).stdout
    )["instance"]  # fmt: skip
    try:
        assert (web["status"], web["host"]) == ("running", "h2"), web
        assert web["kernel"].startswith("image:")
        assert all(x["source"].startswith("image:") for x in web["layers"])
        wait_until(lambda: "lamina-base: ready" in _console(cloud, "web1"), BOOT, "web1 ready")
        console = _console(cloud, "web1")
        assert "lamina-base: release lamina-base 1.0.0" in console
        assert "webserv: serving www.example.org on port 8080" in console
        # Every file the guest boots is in the host's cache under the digest the image has.
        cache = cloud.root / "agent-h2" / "cache"
        for image in images:
            assert (cache / image["sha256"]).is_file()
    finally:
        with cloud.client() as client:
            for vm in client.instances():
                client.wait_job(client.delete_instance(vm["id"])["id"], timeout=120)
