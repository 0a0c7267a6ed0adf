"""The host's migration certificate: where libvirtd and QEMU read it, and the URI a peer's
libvirtd reaches this host's by.

At enrolment the agent makes a second key (besides its agent key) and the manager's CA signs
it for both server and client use, for the host's address. It is written into the agent's
``pki`` folder under the names of both daemons:

* libvirtd (``ca_file``, ``cert_file``, ``key_file`` in ``libvirtd.conf``, and a client's
  ``?pkipath=``): ``cacert.pem``, ``servercert.pem``, ``serverkey.pem``, ``clientcert.pem``,
  ``clientkey.pem``;
* QEMU (``migrate_tls_x509_cert_dir`` in ``qemu.conf``, for ``virsh migrate --tls``):
  ``ca-cert.pem``, ``server-cert.pem``, ``server-key.pem``, ``client-cert.pem``,
  ``client-key.pem``.

So a migration between two hosts of one Lamina is authenticated both ways by the manager's CA:
the source's libvirtd connects to the destination's as a TLS client (and is refused without a
certificate of that CA), and QEMU's migration stream is TLS between the same certificates.
docs/migration-tls.md says what a host's administrator configures.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from cryptography import x509

from lamina.wire.tls import write_private

#: The folder under the agent's data directory.
PKI = "pki"
#: File names: what each daemon expects, for the CA, the certificate and its key.
LIBVIRT_FILES = {
    "cacert.pem": "ca",
    "servercert.pem": "cert",
    "serverkey.pem": "key",
    "clientcert.pem": "cert",
    "clientkey.pem": "key",
}
QEMU_FILES = {
    "ca-cert.pem": "ca",
    "server-cert.pem": "cert",
    "server-key.pem": "key",
    "client-cert.pem": "cert",
    "client-key.pem": "key",
}


def pki_dir(agent_root: Path) -> Path:
    """The pki folder of the agent whose data directory is ``agent_root``."""
    return agent_root / PKI


def write_pki(folder: Path, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
    """Write the CA, the certificate and its key under every name libvirtd and QEMU read
    (each file owner-only, replaced atomically)."""
    data = {"ca": ca_pem, "cert": cert_pem, "key": key_pem}
    for name, kind in (LIBVIRT_FILES | QEMU_FILES).items():
        write_private(folder / name, data[kind])
    folder.chmod(0o700)


def has_pki(folder: Path) -> bool:
    return all((folder / name).is_file() for name in LIBVIRT_FILES | QEMU_FILES)


def certified_address(folder: Path) -> str | None:
    """The address the migration certificate was issued for (its first subject alternative
    name); None without a certificate."""
    try:
        cert = x509.load_pem_x509_certificate((folder / "servercert.pem").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    for name in sans:
        if isinstance(name, (x509.IPAddress, x509.DNSName)):
            return str(name.value)
    return None


def migration_uri(folder: Path) -> str | None:
    """``qemu+tls://ADDRESS/system``: how a peer's libvirtd reaches this host's (the address
    the manager knows the host by, which its certificate names); None without one."""
    address = certified_address(folder)
    if address is None:
        return None
    with_brackets = address
    try:
        if ipaddress.ip_address(address).version == 6:
            with_brackets = f"[{address}]"
    except ValueError:
        pass
    return f"qemu+tls://{with_brackets}/system"


def peer_uri(destination: str, folder: Path) -> str:
    """``destination`` (a peer's ``migration_uri``) as this host's libvirtd must open it for
    a peer-to-peer migration: with ``pkipath`` naming this host's own certificate, which it
    presents as the client."""
    parts = urlsplit(destination)
    query = "&".join(q for q in (parts.query, urlencode({"pkipath": str(folder)}, safe="/")) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
