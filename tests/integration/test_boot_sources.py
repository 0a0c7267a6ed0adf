"""What instances may boot from (issue 12, item 1): members boot from images they may read or
URLs the fetch policy allows, never from a host's files; administrators from host paths only
inside ``compute.boot_paths``; and a host's agent reads no file outside its fetch roots,
whoever asks."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from agent_server import serve_agent
from clouds import add_host
from harness import Cloud

from lamina.agent.cache import FetchConfig
from lamina.client import Client
from lamina.errors import Forbidden, InvalidRequest
from lamina.identity import signing
from lamina.wire.client import AgentClient
from lamina.wire.pool import AgentPool
from lamina.wire.protocol import DiskCreate

pytestmark = pytest.mark.integration


def member(cloud: Cloud, name: str) -> tuple[Client, httpx.Client]:
    secret = cloud.client().add_user(name, f"{name}@example.com")["key"]["secret"]
    raw = httpx.Client(base_url=cloud.url, auth=signing.LaminaAuth(name, secret), timeout=60)
    return cloud.client(name, secret), raw


def cached(cloud: Cloud, host: str = "h1") -> list[str]:
    """The image files in a host's cache."""
    folder = cloud.root / f"agent-{host}" / "cache"
    return sorted(p.name for p in folder.iterdir() if len(p.name) == 64) if folder.exists() else []


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


def test_a_member_cannot_boot_from_a_hosts_files(cloud: Cloud, tmp_path: Path) -> None:
    """The reproduction: ``disk_image`` set to the manager's secret.key (or any root-only
    file), as a path, a file:// URL or through a symlink, as any boot field."""
    _, bob = member(cloud, "bob")
    key = cloud.root / "manager" / "secret.key"
    assert key.is_file()
    link = tmp_path / "innocent.img"
    link.symlink_to(key)
    sources = [str(key), key.as_uri(), f"file://localhost{key}", "FILE://" + str(key)]
    sources += ["/etc/shadow", str(link), f"{tmp_path}/../../{key.relative_to('/')}"]
    before = cached(cloud)
    for source in sources:
        for field in ("disk_image", "kernel"):
            response = bob.post("/instances", json={"name": "thief", field: source})
            assert code(response) == (403, "path_forbidden"), (field, source, response.text)
            assert "only administrators" in response.json()["message"]
    # Nothing was recorded, queued or fetched.
    assert bob.get("/instances").json() == {"instances": []}
    assert bob.get("/jobs").json()["jobs"] == []
    assert cached(cloud) == before


def test_an_administrator_is_refused_host_paths_when_boot_paths_is_off(
    make_cloud: Callable[..., Cloud], tmp_path: Path
) -> None:
    cloud = make_cloud(LAMINA_COMPUTE__BOOT_PATHS="[]")
    cloud.start_manager()
    add_host(cloud, "h1")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 4096)
    for source in (str(kernel), kernel.as_uri(), str(cloud.root / "manager" / "secret.key")):
        response = cloud.http.post("/instances", json={"name": "x", "kernel": source})
        assert code(response) == (403, "path_forbidden"), response.text
        assert "compute.boot_paths" in response.json()["message"]
    assert cached(cloud) == []
    # Images still boot: the agent's default fetch roots are the image store's root.
    with cloud.client() as admin:
        made = admin.create_instance(name="ok", kernel=cloud.boot_image(kernel), memory_mib=64)
        assert admin.wait_job(made["job"]["id"], timeout=60)["status"] == "succeeded"
    assert len(cached(cloud)) == 1


def test_an_administrator_boots_only_from_inside_boot_paths(
    make_cloud: Callable[..., Cloud], tmp_path: Path
) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    kernel = boot / "vmlinuz"
    kernel.write_bytes(b"k" * 4096)
    cloud = make_cloud(LAMINA_COMPUTE__BOOT_PATHS=json.dumps([str(boot)]))
    cloud.start_manager()
    add_host(cloud, "h1")
    secret = cloud.root / "manager" / "secret.key"
    (boot / "escape").symlink_to(secret)
    for source in (str(secret), str(boot / "escape"), f"{boot}/../cloud0/manager/secret.key"):
        response = cloud.http.post("/instances", json={"name": "x", "kernel": source})
        assert code(response) == (403, "path_forbidden"), (source, response.text)
    with cloud.client() as admin:
        made = admin.create_instance(name="ok", kernel=kernel.as_uri(), memory_mib=64)
        assert admin.wait_job(made["job"]["id"], timeout=60)["status"] == "succeeded"
    assert len(cached(cloud)) == 1


def test_members_boot_from_images_they_may_read(cloud: Cloud, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 8192)
    public = cloud.boot_image(kernel, name="kernel-1")
    alice, alice_raw = member(cloud, "alice")
    bob, bob_raw = member(cloud, "bob")
    private = tmp_path / "private.img"
    private.write_bytes(b"alice's own" * 100)
    mine = alice.add_image({"name": "mine", "access": "private"}, file=private)["id"]

    by_id = bob.create_instance(name="a", kernel=public, memory_mib=64)
    by_name = bob.create_instance(name="b", kernel="kernel-1", memory_mib=64)
    for made in (by_id, by_name):
        assert bob.wait_job(made["job"]["id"], timeout=60)["status"] == "succeeded"
        assert made["instance"]["kernel"].startswith(f"image:{public}@sha256:")
    # Alice's private image is not there for Bob, by id or by name; it is for Alice.
    for ref in (mine, "mine"):
        response = bob_raw.post("/instances", json={"name": "c", "disk_image": ref})
        assert code(response) == (404, "not_found"), response.text
    made = alice.create_instance(name="d", disk_image="mine", memory_mib=64)
    assert alice.wait_job(made["job"]["id"], timeout=60)["status"] == "succeeded"
    # An image without a file yet cannot be booted.
    locked = alice.add_image({"name": "empty"})["id"]
    response = alice_raw.post("/instances", json={"name": "e", "kernel": locked})
    assert code(response) == (409, "invalid_state"), response.text


def test_boot_urls_follow_the_fetch_policy_by_default(
    make_cloud: Callable[..., Cloud], tmp_path: Path
) -> None:
    cloud = make_cloud()
    del cloud.base_env["LAMINA_IMAGES__HTTP_ALLOW_PRIVATE"]  # the default: refused
    cloud.start_manager()
    add_host(cloud, "h1")
    _, bob = member(cloud, "bob")
    manager = f"127.0.0.1:{cloud.port}"
    answers = set()
    for url in (
        f"http://{manager}/health",
        f"http://2130706433:{cloud.port}/health",
        f"http://[::ffff:127.0.0.1]:{cloud.port}/health",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/k",
    ):
        response = bob.post("/instances", json={"name": "x", "kernel": url})
        assert code(response) == (400, "location_unavailable"), (url, response.text)
        answers.add(response.text)
    assert len(answers) == 1  # the same answer whatever the reason
    assert bob.get("/instances").json() == {"instances": []}


# -- the agent, asked directly -----------------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Path, AgentClient, Path]]:
    """An agent whose cache may read only ``<tmp>/images``; a world-readable entry left in
    its cache by an older agent."""
    images = tmp_path / "images"
    images.mkdir()
    old = tmp_path / "a" / "agent" / "cache"
    old.mkdir(parents=True)
    (old / ("0" * 64)).write_bytes(b"old")
    os.chmod(old / ("0" * 64), 0o644)
    os.chmod(old, 0o755)
    fetch = FetchConfig(roots=(images,), allow_private=False)
    with serve_agent(tmp_path / "a", fetch=fetch) as served:
        pool = AgentPool(served.ca.client_files())
        try:
            yield images, pool.for_address(served.address), old
        finally:
            pool.close()


def test_the_agent_reads_nothing_outside_its_fetch_roots(
    agent: tuple[Path, AgentClient, Path], tmp_path: Path
) -> None:
    images, client, cache = agent
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    (images / "link").symlink_to(outside)
    (images / "sub").mkdir()
    for source in (
        "/etc/shadow",
        "file:///etc/shadow",
        str(outside),
        str(images / "link"),
        f"{images}/sub/../../outside",
        str(images / "missing"),
        str(images),
    ):
        with pytest.raises(Forbidden) as refused:
            client.cache_install(source)
        assert refused.value.code == "path_forbidden", source
    with pytest.raises(InvalidRequest) as refused_url:
        client.cache_install("http://127.0.0.1:1/x")
    assert refused_url.value.code == "location_unavailable"
    assert sorted(p.name for p in cache.iterdir()) == ["0" * 64]

    inside = images / "ok.img"
    inside.write_bytes(b"fine")
    entry = client.cache_install(inside.as_uri())
    assert stat.S_IMODE(os.stat(entry.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    # The entry an older agent left world-readable was made private at start.
    assert stat.S_IMODE(os.stat(cache / ("0" * 64)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache / "sources.json").st_mode) == 0o600


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def test_a_disk_image_naming_other_host_files_is_refused(
    agent: tuple[Path, AgentClient, Path], tmp_path: Path
) -> None:
    """A qcow2 image is a path list too: its backing file or external data file, or a VMDK's
    extents, would have QEMU (as root) open them for the guest. Only self-contained raw and
    qcow2 images may be a disk's base."""
    images, client, _ = agent
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only" * 1000)
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", f"{images}/b.qcow2")
    qemu_img(
        "create", "-q", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on",
        f"{images}/d.qcow2", "1M",
    )  # fmt: skip
    (images / "e.vmdk").write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW 2048 FLAT "{secret}" 0\n'
    )
    for name in ("b.qcow2", "d.qcow2", "e.vmdk"):
        digest = client.cache_install(str(images / name)).sha256
        with pytest.raises(InvalidRequest, match="self-contained") as refused:
            client.disk_create(
                DiskCreate(guest="thief", name="root", backing=digest, format="qcow2")
            )
        assert refused.value.code == "invalid_request", name
    qemu_img("create", "-q", "-f", "qcow2", f"{images}/ok.qcow2", "1M")
    (images / "ok.raw").write_bytes(b"\0" * 65536)
    for name in ("ok.qcow2", "ok.raw"):
        digest = client.cache_install(str(images / name)).sha256
        made = client.disk_create(
            DiskCreate(guest="fine", name=name.replace(".", "-"), backing=digest, format="qcow2")
        )
        assert made.format == "qcow2"
