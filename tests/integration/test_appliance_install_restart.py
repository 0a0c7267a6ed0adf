"""An appliance install survives its manager being killed mid-download: a new manager takes
the persisted job over once its lease lapses, resumes the layer's download where the partial
file ends (an HTTP Range request to a slow channel server), verifies it and installs."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Cloud, wait_until

from lamina.channels.build import build_channel
from lamina.channels.signing import generate_key, load_private_key, public_key_text

pytestmark = pytest.mark.integration

LAYER_BYTES = 6 * 1024 * 1024
RATE = 1024 * 1024  # bytes a second: the layer takes about 6 s
SUBSTRATE = """<appliance version="1.0" name="slow-os" kind="substrate">
  <label>Slow OS</label>
  <version>1.0</version>
  <layers><layer format="squashfs" source="rootfs.img"/></layers>
  <boot><kernel source="vmlinuz"/><initrd source="initrd.img"/></boot>
</appliance>
"""


class SlowStatic(http.server.SimpleHTTPRequestHandler):
    """Files of a folder, with ``Range`` support, at ``RATE`` bytes a second; logs each GET
    and its Range header."""

    requests: list[tuple[str, str | None]]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and int(match[1]) < len(data):
            start = int(match[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        piece = 64 * 1024
        try:
            for at in range(start, len(data), piece):
                self.wfile.write(data[at : at + piece])
                time.sleep(piece / RATE)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_channel(tmp_path: Path) -> Iterator[tuple[str, str, list[tuple[str, str | None]], bytes]]:
    source = tmp_path / "appliances" / "slow-os"
    source.mkdir(parents=True)
    (source / "appliance.xml").write_text(SUBSTRATE)
    layer = b"hsqs" + os.urandom(LAYER_BYTES - 4)  # squashfs's magic: it is never booted
    (source / "rootfs.img").write_bytes(layer)
    (source / "vmlinuz").write_bytes(os.urandom(4096))
    (source / "initrd.img").write_bytes(os.urandom(4096))
    key = generate_key(tmp_path / "channel.key")
    build_channel(
        tmp_path / "appliances", tmp_path / "public", load_private_key(tmp_path / "channel.key")
    )
    requests: list[tuple[str, str | None]] = []
    handler = functools.partial(
        type("Handler", (SlowStatic,), {"requests": requests}), directory=str(tmp_path / "public")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/channel.rss"
    yield url, public_key_text(key), requests, layer
    server.shutdown()
    server.server_close()


def test_an_install_resumes_after_its_manager_is_killed(
    make_cloud: Callable[..., Cloud],
    slow_channel: tuple[str, str, list[tuple[str, str | None]], bytes],
) -> None:
    url, token, requests, layer = slow_channel
    cloud = make_cloud()
    first = cloud.start_manager()
    cloud.cli("channel", "add", url, "--key", token)
    client = cloud.client()
    job_id = client.install_appliance("slow-os")["job"]["id"]
    digest = hashlib.sha256(layer).hexdigest()
    part = cloud.root / "manager" / "downloads" / f"{job_id}-{digest}.part"
    wait_until(
        lambda: part.exists() and part.stat().st_size > LAYER_BYTES // 4, 30, "a partial layer"
    )
    first.kill()
    held = part.stat().st_size
    assert 0 < held < LAYER_BYTES

    cloud.start_manager()
    job = client.wait_job(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    [row] = [a for a in client.appliances(installed=True) if a["name"] == "slow-os"]
    assert row["status"] == "installed"
    images = {i["sha256"]: i for i in client.images(detail=True)}
    assert images[digest]["size"] == LAYER_BYTES and images[digest]["status"] == "available"
    # The second manager asked only for the rest of the layer.
    layer_gets = [r for p, r in requests if p == f"/files/{digest}"]
    assert layer_gets[0] is None and len(layer_gets) == 2, layer_gets
    resumed_from = int(re.fullmatch(r"bytes=(\d+)-", layer_gets[1] or "")[1])  # type: ignore[index]
    assert resumed_from == held
    assert not part.exists()
