"""How the client checks the manager's HTTPS certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

from lamina.errors import ConfigError


def verifying_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """A client context that checks the server's certificate and name against ``ca_file``
    only, or against the system's trust store when no file is given."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except OSError as exc:  # ssl.SSLError included: not a PEM certificate
        raise ConfigError(
            f"cannot load the CA certificate {ca_file}: {exc.strerror or exc}"
        ) from None
