"""The README's stdlib-only signing example works against a running manager, as written.

The example is the fenced block after the ``<!-- signing-example`` marker in README.md; it is run
as is, in a subprocess, with nothing but the standard library importable from it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness import Cloud

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- signing-example"


def example() -> str:
    text = README.read_text()
    assert MARKER in text, f"README.md lost its {MARKER} ... --> marker"
    after = text.split(MARKER, 1)[1]
    match = re.match(r"[^\n]*-->\n```python\n(.*?)\n```\n", after, flags=re.DOTALL)
    assert match, "the signing example must be a ```python block right after its marker"
    code = match.group(1)
    imported = re.findall(r"^(?:import|from) ([\w.]+)", code, flags=re.MULTILINE)
    outside = [m for m in imported if m.split(".")[0] not in sys.stdlib_module_names]
    assert imported and not outside, f"the example must use only the standard library: {outside}"
    return code


def run(
    tmp_path: Path, url: str, access: str, secret: str, *args: str
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "sign.py"
    script.write_text(example())
    # Only the standard library: no virtualenv site-packages, no inherited LAMINA_* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "PYTHON"))}
    env.update(LAMINA_URL=url, LAMINA_ACCESS_KEY=access, LAMINA_SECRET_KEY=secret)
    return subprocess.run(
        [sys.executable, "-I", "-S", str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_readme_example_lists_instances_with_a_signed_query(cloud: Cloud, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not really a kernel" * 100)
    with cloud.client() as client:
        for name in ("up", "down"):
            job = client.create_instance(name=name, kernel=str(kernel), memory_mib=64)["job"]
            assert client.wait_job(job["id"], timeout=60)["status"] == "succeeded"
        job = client.instance_action("down", "stop", force=True)
        assert client.wait_job(job["id"], timeout=60)["status"] == "succeeded"
        wanted = client.instances(status="running", limit=5)
    assert [i["name"] for i in wanted] == ["up"]  # the query filters: it was signed and read
    result = run(tmp_path, cloud.url, *cloud.keys())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0]) == {"instances": wanted}


def test_readme_example_signs_a_json_body(cloud: Cloud, tmp_path: Path) -> None:
    result = run(tmp_path, cloud.url, *cloud.keys(), "user", "alice", "alice@example.org")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == {"instances": []}
    user = json.loads(lines[1])
    assert (user["access_key"], user["role"]) == ("alice", "member")
    with cloud.client() as client:
        assert client.user("alice")["email"] == "alice@example.org"


def test_readme_example_signs_metadata_headers(cloud: Cloud, tmp_path: Path) -> None:
    result = run(tmp_path, cloud.url, *cloud.keys(), "image", "Debian 12")
    assert result.returncode == 0, result.stderr
    image = json.loads(result.stdout.splitlines()[1])
    assert (image["name"], image["access"], image["status"]) == ("Debian 12", "private", "locked")


def test_readme_example_is_refused_with_a_wrong_secret(cloud: Cloud, tmp_path: Path) -> None:
    access, secret = cloud.keys()
    result = run(tmp_path, cloud.url, access, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert result.returncode != 0
    assert "403" in result.stderr and "auth_bad_signature" in result.stderr
