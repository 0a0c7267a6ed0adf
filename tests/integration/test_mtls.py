"""Mutual TLS between the manager and its agents, over real sockets on 127.0.0.1.

A real manager and two real ``lamina agent`` processes (libvirt's ``test:///default``) enrol
with one-time tokens; then each side is shown to refuse the other's impostors: the agent
refuses clients without a certificate from the manager's CA (including another agent's
certificate), and the manager's ``AgentPool`` refuses agents whose certificate is foreign,
made out for another address, or not a server certificate.
"""

from __future__ import annotations

import http.server
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from fastapi import FastAPI
from harness import Cloud, free_port, wait_until

from lamina.agent.enrol import enrol
from lamina.agent.migration_tls import LIBVIRT_FILES, QEMU_FILES
from lamina.compute.models import Host
from lamina.db import Database
from lamina.db.types import utcnow
from lamina.errors import BackendUnavailable, Forbidden
from lamina.identity.ca import CertificateAuthority
from lamina.wire.pool import AgentPool
from lamina.wire.tls import TLSFiles, client_context, key_pem, make_csr, new_key, write_private

pytestmark = pytest.mark.integration


# -- fixtures ----------------------------------------------------------------------------


class Enrolled:
    """The module's cloud: a manager and two enrolled agents, h1 and h2."""

    def __init__(self, cloud: Cloud, ports: dict[str, int]) -> None:
        self.cloud = cloud
        self.ports = ports
        self.ca = CertificateAuthority(cloud.root / "manager" / "ca")
        self.http = cloud.http

    def agent_url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.ports[name]}"

    def agent_files(self, name: str) -> TLSFiles:
        tls = self.cloud.root / f"agent-{name}" / "tls"
        return TLSFiles(tls / "agent.pem", tls / "agent.key", tls / "ca.pem")

    def add_host(self, name: str) -> str:
        """Register a host through the API; return its enrolment token."""
        address = f"127.0.0.1:{free_port()}"
        response = self.http.post("/hosts", json={"name": name, "address": address})
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def post_enrol(self, token: str) -> httpx.Response:
        csr = make_csr(new_key(), "intruder").decode()
        return self.http.post("/hosts/enrol", json={"token": token, "csr": csr})

    def host(self, name: str) -> dict[str, object]:
        response = self.http.get(f"/hosts/{name}")
        assert response.status_code == 200, response.text
        return dict(response.json()["host"])


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enrolled]:
    cloud = Cloud(tmp_path_factory.mktemp("mtls"))
    try:
        cloud.start_manager()
        ports = {"h1": free_port(), "h2": free_port()}
        for name, port in ports.items():
            # The operator's path: `lamina host add`, then `lamina agent --token`.
            added = cloud.cli("--json", "host", "add", name, "--address", f"127.0.0.1:{port}")
            token = json.loads(added.stdout)["token"]
            cloud.start_agent(name, token, port)
        env = Enrolled(cloud, ports)
        for name in ports:
            wait_until(lambda n=name: env.host(n)["status"] == "up", 30, f"{name} up")
        yield env
        env.http.close()
    finally:
        cloud.stop()


@pytest.fixture
def other_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "other-ca")


def issue(
    ca: CertificateAuthority, directory: Path, name: str, *, sans: list[str], server: bool
) -> TLSFiles:
    """A certificate from ``ca`` with a fresh key, written under ``directory``."""
    key = new_key()
    cert = ca.sign(make_csr(key, name), common_name=name, sans=sans, server=server)
    files = TLSFiles(directory / f"{name}.pem", directory / f"{name}.key", ca.cert_path)
    write_private(files.key, key_pem(key))
    write_private(files.cert, cert)
    return files


def trust_only(ca: CertificateAuthority, *, tls12: bool = False) -> ssl.SSLContext:
    """A client context that verifies the agent with ``ca`` and presents no certificate."""
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def with_cert(ca: CertificateAuthority, files: TLSFiles, *, tls12: bool = False) -> ssl.SSLContext:
    ctx = trust_only(ca, tls12=tls12)
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def assert_refused(url: str, port: int, make_ctx: object) -> None:
    """The agent lets the client through neither at the TLS 1.2 handshake (it fails there)
    nor with TLS 1.3 (the client's certificate arrives after the server's Finished, so the
    client's handshake returns but the server closes the connection without one byte)."""
    assert callable(make_ctx)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            make_ctx(tls12=True).wrap_socket(raw, server_hostname="127.0.0.1")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/info", verify=make_ctx(), timeout=10)


class RogueAgent:
    """A TLS server on a free port, presenting whatever certificate it is given."""

    def __init__(self, files: TLSFiles) -> None:
        app = FastAPI()

        @app.get("/info")
        def info() -> dict[str, str]:
            return {"rogue": "yes"}

        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            ssl_certfile=str(files.cert),
            ssl_keyfile=str(files.key),
            log_level="critical",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RogueAgent:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "rogue agent")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


# -- enrolment ---------------------------------------------------------------------------


def test_enrolled_agents_are_up_with_server_only_certificates(enrolled: Enrolled) -> None:
    for name in ("h1", "h2"):
        host = enrolled.host(name)
        assert host["status"] == "up" and host["enrolled"] is True
        assert host["domain_type"] == "test"
        files = enrolled.agent_files(name)
        assert files.exist()
        assert files.key.stat().st_mode & 0o777 == 0o600
        assert files.ca.read_bytes() == enrolled.ca.cert_pem
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_enrolled_agents_have_a_migration_certificate_for_libvirt_and_qemu(
    enrolled: Enrolled,
) -> None:
    """Enrolment also gives each host the certificate its libvirtd and QEMU authenticate
    migrations with: a key of its own (not the agent's), server and client use, the host's
    address, under the names both daemons read; the agent reports the URI peers use."""
    pool = AgentPool(enrolled.ca.client_files())
    try:
        for name in ("h1", "h2"):
            pki = enrolled.cloud.root / f"agent-{name}" / "pki"
            for file in (*LIBVIRT_FILES, *QEMU_FILES):
                assert (pki / file).stat().st_mode & 0o777 == 0o600, file
            assert (pki / "cacert.pem").read_bytes() == enrolled.ca.cert_pem
            assert (pki / "ca-cert.pem").read_bytes() == enrolled.ca.cert_pem
            cert_pem = (pki / "servercert.pem").read_bytes()
            assert (pki / "clientcert.pem").read_bytes() == cert_pem
            assert (pki / "server-cert.pem").read_bytes() == cert_pem
            assert (pki / "server-key.pem").read_bytes() == (pki / "serverkey.pem").read_bytes()
            assert (pki / "serverkey.pem").read_bytes() != enrolled.agent_files(
                name
            ).key.read_bytes()
            cert = x509.load_pem_x509_certificate(cert_pem)
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(enrolled.ca.cert_pem))
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
            info = pool.for_address(str(enrolled.host(name)["address"])).info()
            assert info.migration_uri == "qemu+tls://127.0.0.1/system"
    finally:
        pool.close()


def test_token_is_single_use(enrolled: Enrolled) -> None:
    token = enrolled.add_host("once")
    assert enrolled.post_enrol(token).status_code == 200
    again = enrolled.post_enrol(token)
    assert again.status_code == 403
    assert again.json() == {
        "code": "forbidden",
        "message": "enrolment token is unknown or already used",
    }


def test_unknown_token_is_refused(enrolled: Enrolled) -> None:
    response = enrolled.post_enrol(f"{secrets.token_urlsafe(24)}.{enrolled.ca.fingerprint}")
    assert response.status_code == 403
    assert "unknown or already used" in response.json()["message"]


def test_expired_token_is_refused(enrolled: Enrolled) -> None:
    token = enrolled.add_host("late")
    database = Database(f"sqlite:///{enrolled.cloud.root / 'manager' / 'lamina.db'}")
    try:
        with database.write() as s:
            host = s.query(Host).filter_by(name="late").one()
            host.token_expires = utcnow() - timedelta(minutes=1)
    finally:
        database.dispose()
    response = enrolled.post_enrol(token)
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert "expired" in response.json()["message"]
    assert enrolled.host("late")["enrolled"] is False


def test_manager_refuses_token_of_another_ca(
    enrolled: Enrolled, other_ca: CertificateAuthority
) -> None:
    secret, _, _ = enrolled.add_host("tampered").rpartition(".")
    response = enrolled.post_enrol(f"{secret}.{other_ca.fingerprint}")
    assert response.status_code == 403
    assert response.json()["message"] == "enrolment token was issued by another CA"
    # The refusal did not spend the real token.
    assert enrolled.post_enrol(f"{secret}.{enrolled.ca.fingerprint}").status_code == 200


class _RogueManager(http.server.BaseHTTPRequestHandler):
    """Serves another CA's certificate and notes every request it gets."""

    ca_pem = b""
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.seen.append(f"GET {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.ca_pem)))
        self.end_headers()
        self.wfile.write(self.ca_pem)

    def do_POST(self) -> None:  # noqa: N802
        self.seen.append(f"POST {self.path}")
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_agent_refuses_a_manager_whose_ca_does_not_match_the_token(
    enrolled: Enrolled, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    token = enrolled.add_host("mitm")
    handler = type("Handler", (_RogueManager,), {"ca_pem": other_ca.cert_pem, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    files = TLSFiles(tmp_path / "a.pem", tmp_path / "a.key", tmp_path / "ca.pem")
    try:
        with pytest.raises(Forbidden, match="does not match the token's fingerprint"):
            enrol(f"http://127.0.0.1:{server.server_port}", token, "mitm", files)
    finally:
        server.shutdown()
        server.server_close()
    # It asked for the CA certificate and nothing else: the token's secret never left.
    assert handler.seen == ["GET /ca.pem"]
    assert not any(p.exists() for p in (files.cert, files.key, files.ca))


def test_agent_process_refuses_a_token_of_another_ca(
    enrolled: Enrolled, other_ca: CertificateAuthority
) -> None:
    secret, _, _ = enrolled.add_host("wrongca").rpartition(".")
    agent = enrolled.cloud.start_agent("wrongca", f"{secret}.{other_ca.fingerprint}", free_port())
    try:
        wait_until(lambda: not agent.alive(), 30, "the agent to give up")
        assert agent.proc is not None and agent.proc.returncode != 0
        assert "does not match the token's fingerprint" in agent.output()
        assert not (enrolled.cloud.root / "agent-wrongca" / "tls" / "agent.pem").exists()
        # The agent never sent the secret, so the host's real token still works.
        assert enrolled.post_enrol(f"{secret}.{enrolled.ca.fingerprint}").status_code == 200
    finally:
        agent.kill()


# -- the agent refuses clients without the manager's certificate -------------------------


def test_agent_accepts_the_managers_client_certificate(enrolled: Enrolled) -> None:
    manager = enrolled.ca.client_files()
    response = httpx.get(f"{enrolled.agent_url('h1')}/info", verify=client_context(manager))
    assert response.status_code == 200
    assert response.json()["domain_type"] == "test"
    # And over TLS 1.2, so the refusals below are not about the protocol version.
    with socket.create_connection(("127.0.0.1", enrolled.ports["h1"]), timeout=10) as raw:
        ctx = with_cert(enrolled.ca, manager, tls12=True)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.2"
    pool = AgentPool(enrolled.ca.client_files())
    try:
        info = pool.for_address(f"127.0.0.1:{enrolled.ports['h1']}").info()
        assert info.domain_type == "test" and "server_info" in info.capabilities
    finally:
        pool.close()


def test_agent_refuses_a_client_without_certificate(enrolled: Enrolled) -> None:
    assert_refused(
        enrolled.agent_url("h1"),
        enrolled.ports["h1"],
        lambda tls12=False: trust_only(enrolled.ca, tls12=tls12),
    )


def test_agent_refuses_a_client_certificate_from_another_ca(
    enrolled: Enrolled, other_ca: CertificateAuthority
) -> None:
    foreign = other_ca.client_files()
    assert_refused(
        enrolled.agent_url("h1"),
        enrolled.ports["h1"],
        lambda tls12=False: with_cert(enrolled.ca, foreign, tls12=tls12),
    )


def test_agent_refuses_another_agents_certificate_as_client(enrolled: Enrolled) -> None:
    # h2's certificate is from the right CA, but it is a server certificate only: OpenSSL
    # refuses it for client authentication ("unsuitable certificate purpose").
    h2 = enrolled.agent_files("h2")
    assert_refused(
        enrolled.agent_url("h1"),
        enrolled.ports["h1"],
        lambda tls12=False: with_cert(enrolled.ca, h2, tls12=tls12),
    )


# -- the manager refuses agents it did not certify --------------------------------------


def _pool_call(ca: CertificateAuthority, port: int) -> BackendUnavailable:
    pool = AgentPool(ca.client_files())
    started = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable) as caught:
            pool.for_address(f"127.0.0.1:{port}").info()
    finally:
        pool.close()
    assert time.monotonic() - started < 5, "a refused certificate must not be retried"
    return caught.value


def test_pool_refuses_an_agent_certified_by_another_ca(
    enrolled: Enrolled, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    files = issue(other_ca, tmp_path, "rogue", sans=["127.0.0.1"], server=True)
    with RogueAgent(files) as rogue:
        error = _pool_call(enrolled.ca, rogue.port)
    # Each Lamina CA has a name of its own, so the foreign issuer is simply unknown.
    assert "certificate verify failed: unable to get local issuer certificate" in error.message


def test_pool_refuses_an_agent_whose_certificate_names_another_address(
    enrolled: Enrolled, tmp_path: Path
) -> None:
    files = issue(enrolled.ca, tmp_path, "elsewhere", sans=["10.9.9.9"], server=True)
    with RogueAgent(files) as rogue:
        error = _pool_call(enrolled.ca, rogue.port)
    assert "certificate verif" in error.message
    assert "IP address mismatch" in error.message


def test_pool_refuses_an_agent_serving_a_client_certificate(enrolled: Enrolled) -> None:
    # The manager's own certificate (client purpose only) cannot impersonate an agent.
    with RogueAgent(enrolled.ca.client_files()) as rogue:
        error = _pool_call(enrolled.ca, rogue.port)
    assert "unsuitable certificate purpose" in error.message
