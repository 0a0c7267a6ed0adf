"""Who is calling: the identity every domain function is handed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    user_id: str
    access_key: str
    role: str
    #: How the caller proved it: "signature", "visor-signature" or "session".
    via: str = "signature"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
