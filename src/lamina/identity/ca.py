"""Lamina's own certificate authority, for mutual TLS between the manager and its agents.

The CA's key never leaves the manager's data directory. An agent makes its own key, sends a
certificate signing request with its one-time enrolment token, and gets back a certificate
valid for its address. The manager talks to agents with a client certificate from the same CA.
With ``manager.tls = "ca"`` the same CA also issues the manager's HTTPS certificate.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lamina.errors import InvalidRequest
from lamina.wire.tls import TLSFiles, fingerprint, key_pem, make_csr, new_key, write_private

CA_DAYS = 3650
LEAF_DAYS = 825


class CertificateAuthority:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.cert_path = directory / "ca.pem"
        self.key_path = directory / "ca.key"
        if not (self.cert_path.is_file() and self.key_path.is_file()):
            self._create()
        self.cert_pem = self.cert_path.read_bytes()
        self._cert = x509.load_pem_x509_certificate(self.cert_pem)
        loaded = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self._key = loaded

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)

    def _create(self) -> None:
        key = new_key()
        # A unique name per installation, so a foreign certificate reads as "unknown issuer".
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"Lamina CA {os.urandom(4).hex()}")]
        )
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        write_private(self.key_path, key_pem(key))
        write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))

    def sign(
        self,
        csr_pem: bytes,
        *,
        common_name: str,
        sans: list[str],
        server: bool,
        client: bool | None = None,
    ) -> bytes:
        """Issue a leaf certificate for a CSR. ``server`` certificates are for agents (they
        serve TLS and must match their address); others are client certificates. ``client``
        (default: not ``server``) adds client use: a host's migration certificate is both, as
        libvirtd and QEMU serve their peers and connect to them with the same one."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise InvalidRequest("the certificate signing request is not valid PEM") from None
        if not csr.is_signature_valid:
            raise InvalidRequest("the certificate signing request's signature is wrong")
        now = datetime.now(UTC)
        # One purpose per certificate: an agent's certificate must not open another agent
        # as a client, and the manager's client certificate must not serve as an agent.
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        if client if client is not None else not server:
            usage.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(usage),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)

    def server_files(self, names: list[str], name: str = "server") -> TLSFiles:
        """The manager's HTTPS certificate for ``names`` (IP addresses or DNS names), made on
        first use and made again when the names change, the CA changed or it expires within
        30 days. Key and certificate share one file, so a reader never sees a mismatched pair.
        """
        path = self.dir / f"{name}.pem"
        if not self._serves(path, names):
            key = new_key()
            cert = self.sign(make_csr(key, names[0]), common_name=names[0], sans=names, server=True)
            write_private(path, cert + key_pem(key))
        return TLSFiles(path, path, self.cert_path)

    def _serves(self, path: Path, names: list[str]) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            cert.verify_directly_issued_by(self._cert)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        wanted = {_general_name(n) for n in names}
        fresh = cert.not_valid_after_utc > datetime.now(UTC) + timedelta(days=30)
        return fresh and set(sans) == wanted

    def client_files(self, name: str = "manager") -> TLSFiles:
        """The manager's client certificate, made on first use."""
        files = TLSFiles(self.dir / f"{name}.pem", self.dir / f"{name}.key", self.cert_path)
        if not (files.cert.is_file() and files.key.is_file()):
            key = new_key()
            cert = self.sign(make_csr(key, name), common_name=name, sans=[], server=False)
            write_private(files.key, key_pem(key))
            write_private(files.cert, cert)
        return files


def _general_name(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)
