"""Lamina's own certificate authority, for mutual TLS between the manager and its agents.

The CA's key never leaves the manager's data directory. An agent makes its own key, sends a
certificate signing request with its one-time enrolment token, and gets back a certificate
valid for its address. The manager talks to agents with a client certificate from the same CA.
With ``manager.tls = "ca"`` the same CA also issues the manager's HTTPS certificate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lamina.errors import InvalidRequest

CA_DAYS = 3650
LEAF_DAYS = 825


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a certificate, its key and the CA certificate that signed it."""

    cert: Path
    key: Path
    ca: Path

    def exist(self) -> bool:
        return self.cert.is_file() and self.key.is_file() and self.ca.is_file()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER form, in hex."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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

    def sign(self, csr_pem: bytes, *, common_name: str, sans: list[str], server: bool) -> bytes:
        """Issue a leaf certificate for a CSR. ``server`` certificates are for agents (they
        serve TLS and must match their address); others are client certificates."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise InvalidRequest("the certificate signing request is not valid PEM") from None
        if not csr.is_signature_valid:
            raise InvalidRequest("the certificate signing request's signature is wrong")
        now = datetime.now(UTC)
        # One purpose per certificate: an agent's certificate must not open another agent
        # as a client, and the manager's client certificate must not serve as an agent.
        usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
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


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """TLS for a listener that accepts only clients with a certificate from our CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """TLS for a client that presents its certificate and trusts only our CA."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
