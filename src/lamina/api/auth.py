"""Where authentication plugs in. ``create_app`` makes every router except /health and
host enrolment depend on ``principal``.

Until signed requests and sessions arrive (the identity issue), the manager listens on
127.0.0.1 only by default and every caller acts as the local administrator.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request


@dataclass(frozen=True)
class Principal:
    name: str | None
    role: str = "admin"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


LOCAL_ADMIN = Principal(name=None, role="admin")


def principal(request: Request) -> Principal:
    """Who is calling. The identity issue replaces this body with signature checks."""
    return LOCAL_ADMIN
