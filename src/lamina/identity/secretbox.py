"""Encryption at rest of users' secret keys, with a key kept in the data directory.

Several managers sharing a database must share this key file (``<data_dir>/secret.key``).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from lamina.errors import ConfigError
from lamina.wire.tls import write_private


class SecretBox:
    def __init__(self, data_dir: Path) -> None:
        path = data_dir / "secret.key"
        if not path.is_file():
            write_private(path, Fernet.generate_key())
        self._key = path.read_bytes().strip()
        self._fernet = Fernet(self._key)
        self.path = path

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                f"a stored secret key cannot be decrypted with {self.path}: every manager "
                "sharing this database must use the same secret.key"
            ) from None

    def derive(self, purpose: str) -> bytes:
        """A key for ``purpose`` derived from this box's key (HMAC-SHA256 of the purpose):
        every manager sharing ``secret.key`` derives the same one, and it reveals nothing
        of the key itself."""
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).digest()
