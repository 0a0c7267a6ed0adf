"""The manager over HTTPS, with real ``lamina serve`` and ``lamina agent`` processes.

``manager.tls = "ca"``: the CLI (its credentials file names Lamina's CA) and an enrolling
agent work over HTTPS; a client trusting another CA, or only the system's store, is refused;
plain HTTP to the port fails. ``"files"``: a certificate from another CA works for a client
given that CA, an agent enrols only when something it trusts vouches for the certificate, and
a key that does not belong to the certificate stops ``lamina serve`` naming the setting.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from clouds import add_host
from harness import LAMINA, ROOT, Cloud, free_port, wait_until

from lamina.client import Client
from lamina.errors import BackendUnavailable
from lamina.identity.ca import CertificateAuthority
from lamina.wire.tls import key_pem, make_csr, new_key

pytestmark = pytest.mark.integration

MakeCloud = Callable[..., Cloud]


def _server_pair(ca: CertificateAuthority, directory: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 from ``ca``, and its key."""
    key = new_key()
    cert = ca.sign(
        make_csr(key, "127.0.0.1"),
        common_name="127.0.0.1",
        sans=["127.0.0.1", "localhost"],
        server=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key_pem(key))
    return directory / "cert.pem", directory / "key.pem"


def test_ca_mode_cli_agent_and_refusals(make_cloud: MakeCloud, tmp_path: Path) -> None:
    cloud = make_cloud(LAMINA_MANAGER__TLS="ca")
    cloud.start_manager()
    assert cloud.url.startswith("https://127.0.0.1:")
    profile = tomllib.loads(cloud.credentials.read_text())["default"]
    lamina_ca = cloud.root / "manager" / "ca" / "ca.pem"
    assert profile["url"] == cloud.url and profile["ca_file"] == str(lamina_ca)

    # The CLI, with nothing but the bootstrapped credentials file.
    assert json.loads(cloud.cli("--json", "whoami").stdout)["access_key"] == "admin"
    # `host add` over HTTPS, then the agent enrols over HTTPS and the host comes up.
    add_host(cloud, "h1")
    agent_ca = cloud.root / "agent-h1" / "tls" / "ca.pem"
    assert agent_ca.read_bytes() == lamina_ca.read_bytes()
    with cloud.client() as client:
        assert client.host("h1")["status"] == "up"

    access, secret = cloud.keys()
    # Another CA: refused as an unknown issuer, whichever way the CA is given.
    other = CertificateAuthority(tmp_path / "other-ca")
    with Client(cloud.url, access_key=access, secret_key=secret, ca_file=str(other.cert_path)) as c:
        with pytest.raises(BackendUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            c.health()
    env = {**cloud.base_env, "LAMINA_CA_FILE": str(other.cert_path)}
    refused = _run_cli(env, "whoami")
    assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    assert "LAMINA_CA_FILE" in refused.stderr  # the hint says what to set
    # No CA file at all: the system's store decides, and it does not know Lamina's CA.
    with Client(cloud.url, access_key=access, secret_key=secret) as c:
        with pytest.raises(BackendUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            c.health()

    # Plain HTTP to the HTTPS port gets no answer.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{cloud.port}/health", timeout=10)
    with Client(f"http://127.0.0.1:{cloud.port}", access_key=access, secret_key=secret) as c:
        with pytest.raises(BackendUnavailable):
            c.health()


def test_files_mode_with_a_certificate_from_another_ca(
    make_cloud: MakeCloud, tmp_path: Path
) -> None:
    external = CertificateAuthority(tmp_path / "external-ca")
    cert, key = _server_pair(external, tmp_path / "tls")
    cloud = make_cloud(
        LAMINA_MANAGER__TLS="files",
        LAMINA_MANAGER__TLS_CERT=str(cert),
        LAMINA_MANAGER__TLS_KEY=str(key),
        LAMINA_MANAGER__TLS_CA_FILE=str(external.cert_path),
    )
    cloud.start_manager()
    # `lamina user bootstrap` wrote manager.tls_ca_file as the client's CA.
    profile = tomllib.loads(cloud.credentials.read_text())["default"]
    assert profile["ca_file"] == str(external.cert_path)
    assert json.loads(cloud.cli("--json", "whoami").stdout)["access_key"] == "admin"

    access, secret = cloud.keys()
    with Client(
        cloud.url, access_key=access, secret_key=secret, ca_file=str(external.cert_path)
    ) as c:
        assert c.health()
    lamina_ca = cloud.root / "manager" / "ca" / "ca.pem"
    with Client(cloud.url, access_key=access, secret_key=secret, ca_file=str(lamina_ca)) as c:
        with pytest.raises(BackendUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            c.health()

    # An agent trusts the system's store and the pinned Lamina CA; neither knows the external
    # CA, so it refuses to send its token, which stays unspent.
    port = free_port()
    out = cloud.cli("--json", "host", "add", "h1", "--address", f"127.0.0.1:{port}")
    token = json.loads(out.stdout)["token"]
    agent = cloud.start_agent("h1", token, port)
    wait_until(lambda: not agent.alive(), 30, "the agent to give up")
    assert "CERTIFICATE_VERIFY_FAILED" in agent.output()
    with cloud.client() as client:
        assert client.host("h1")["status"] == "pending"
    # With the external CA in its trust store (SSL_CERT_FILE), the same token enrols it.
    cloud.agents.remove(agent)
    cloud.start_agent("h1", token, port, SSL_CERT_FILE=str(external.cert_path))
    with cloud.client() as client:
        wait_until(lambda: client.host("h1")["status"] == "up", 30, "host h1 up")


@pytest.mark.parametrize(
    ("setting", "broken"),
    [("manager.tls_key", "mismatched key"), ("manager.tls_cert", "missing certificate")],
)
def test_serve_refuses_bad_files(
    make_cloud: MakeCloud, tmp_path: Path, setting: str, broken: str
) -> None:
    ca = CertificateAuthority(tmp_path / "external-ca")
    cert, _ = _server_pair(ca, tmp_path / "a")
    _, other_key = _server_pair(ca, tmp_path / "b")
    if broken == "missing certificate":
        cert = tmp_path / "nowhere.pem"
    cloud = make_cloud(
        LAMINA_MANAGER__TLS="files",
        LAMINA_MANAGER__TLS_CERT=str(cert),
        LAMINA_MANAGER__TLS_KEY=str(other_key),
    )
    result = cloud.cli("serve", check=False, timeout=60)
    assert result.returncode != 0
    assert f"invalid setting {setting}" in result.stderr
    env_var = "$LAMINA_" + setting.replace(".", "__").upper()
    assert env_var in result.stderr


def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        LAMINA + list(args), env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
