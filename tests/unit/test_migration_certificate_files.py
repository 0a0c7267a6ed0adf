"""The migration certificate's files and URIs (``lamina.agent.migration_tls``), with real
certificates from a real CA; libvirtd and QEMU reading them is
tests/integration/test_migration_tls.py."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from lamina.agent.migration_tls import (
    LIBVIRT_FILES,
    QEMU_FILES,
    certified_address,
    has_pki,
    migration_uri,
    peer_uri,
    write_pki,
)
from lamina.identity.ca import CertificateAuthority
from lamina.wire.tls import key_pem, make_csr, new_key


def issue(tmp_path: Path, address: str) -> Path:
    ca = CertificateAuthority(tmp_path / "ca")
    key = new_key()
    cert = ca.sign(make_csr(key, "h1"), common_name="h1", sans=[address], server=True, client=True)
    pki = tmp_path / "pki"
    write_pki(pki, ca.cert_pem, cert, key_pem(key))
    return pki


def test_both_daemons_names_are_written_owner_only(tmp_path: Path) -> None:
    pki = issue(tmp_path, "10.99.0.11")
    assert has_pki(pki)
    assert {p.name for p in pki.iterdir()} == set(LIBVIRT_FILES) | set(QEMU_FILES)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in pki.iterdir())
    assert pki.stat().st_mode & 0o777 == 0o700
    (pki / "client-key.pem").unlink()
    assert not has_pki(pki)


def test_the_certificate_serves_and_connects(tmp_path: Path) -> None:
    pki = issue(tmp_path, "10.99.0.11")
    cert = x509.load_pem_x509_certificate((pki / "servercert.pem").read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_agents_and_manager_certificates_keep_one_use(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    for server, wanted in (
        (True, ExtendedKeyUsageOID.SERVER_AUTH),
        (False, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        pem = ca.sign(make_csr(new_key(), "x"), common_name="x", sans=[], server=server)
        cert = x509.load_pem_x509_certificate(pem)
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            wanted
        ]


def test_migration_uri_names_the_certified_address(tmp_path: Path) -> None:
    assert migration_uri(tmp_path / "none") is None
    pki = issue(tmp_path, "10.99.0.12")
    assert certified_address(pki) == "10.99.0.12"
    assert migration_uri(pki) == "qemu+tls://10.99.0.12/system"


def test_migration_uri_brackets_ipv6(tmp_path: Path) -> None:
    assert migration_uri(issue(tmp_path, "fd00::12")) == "qemu+tls://[fd00::12]/system"


def test_peer_uri_adds_this_hosts_pkipath() -> None:
    pki = Path("/var/lib/lamina/agent/pki")
    assert peer_uri("qemu+tls://10.99.0.12/system", pki) == (
        "qemu+tls://10.99.0.12/system?pkipath=/var/lib/lamina/agent/pki"
    )
    assert peer_uri("qemu+tls://h2/system?no_verify=0", pki) == (
        "qemu+tls://h2/system?no_verify=0&pkipath=/var/lib/lamina/agent/pki"
    )
