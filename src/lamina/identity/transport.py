"""The manager's HTTPS: which certificate ``lamina serve`` presents, and how clients check it.

``manager.tls``:

- ``"off"``: plain HTTP (the default, listening on 127.0.0.1 only).
- ``"ca"``: a server certificate from Lamina's own CA (``<data_dir>/ca/server.pem``, key in
  the same file) for the listen address, made at start and made again when the names change.
  Clients trust ``<data_dir>/ca/ca.pem``; agents pin it by the fingerprint in their token.
- ``"files"``: the administrator's ``manager.tls_cert`` and ``manager.tls_key``, checked at
  start (readable, the key belongs to the certificate).

Clients never skip verification: they trust the one CA file they are given, else the
system's trust store.
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lamina.config import ENV_PREFIX, Settings
from lamina.errors import ConfigError
from lamina.identity.ca import CertificateAuthority

log = logging.getLogger(__name__)

_WILDCARDS = ("", "0.0.0.0", "::")
_LOOPBACK = ["127.0.0.1", "::1", "localhost"]


def server_names(host: str, public_url: str | None) -> list[str]:
    """The names a "ca" certificate carries: the listen address (the loopback names when it
    is a loopback address or all interfaces) and the host of ``public_url``."""
    names = [] if host in _WILDCARDS else [host]
    if host in _WILDCARDS or _is_loopback(host):
        names += _LOOPBACK
    if public_url and (public_host := urlsplit(public_url).hostname):
        names.append(public_host)
    return list(dict.fromkeys(names))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def manager_tls(settings: Settings, host: str | None = None) -> tuple[Path, Path] | None:
    """The certificate and key files ``lamina serve`` listens with (None for plain HTTP),
    making the "ca" certificate if needed. ``host`` is the listen address when ``--host``
    overrides ``manager.host``. Raises ``ConfigError`` naming the setting at fault."""
    manager = settings.manager
    if manager.tls == "off":
        return None
    if manager.tls == "files":
        assert manager.tls_cert is not None and manager.tls_key is not None  # the model checks
        check_key_pair(manager.tls_cert, manager.tls_key)
        return manager.tls_cert, manager.tls_key
    ca = CertificateAuthority(settings.data_dir.resolve() / "ca")
    files = ca.server_files(server_names(host or manager.host, manager.public_url))
    return files.cert, files.key


def _bad(key: str, message: str) -> ConfigError:
    env = ENV_PREFIX + key.replace(".", "__").upper()
    return ConfigError(f"invalid setting {key} (file key or ${env}): {message}")


def check_key_pair(cert_path: Path, key_path: Path) -> None:
    """Refuse, naming the setting, a certificate or key that cannot be read or parsed, or a
    key that does not belong to the certificate (the first one in the file)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as exc:
        raise _bad("manager.tls_cert", f"cannot read {cert_path}: {exc.strerror}") from None
    except ValueError:
        raise _bad("manager.tls_cert", f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise _bad("manager.tls_key", f"cannot read {key_path}: {exc.strerror}") from None
    except TypeError:
        raise _bad("manager.tls_key", f"{key_path} is encrypted; give an unencrypted key") from None
    except ValueError:
        raise _bad("manager.tls_key", f"{key_path} is not a PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise _bad(
            "manager.tls_key",
            f"{key_path} is not the key of the certificate {cert_path} (manager.tls_cert)",
        )
    if cert.not_valid_after_utc < datetime.now(UTC):
        log.warning(
            "the manager's certificate %s expired on %s", cert_path, cert.not_valid_after_utc
        )
