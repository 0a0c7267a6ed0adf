"""The first administrator, made on the manager's machine from its own database (like
``keystone-manage bootstrap``): the REST API cannot make the first user, since it requires one."""

from __future__ import annotations

from sqlalchemy import select

from lamina.db import Database
from lamina.errors import InvalidState
from lamina.identity.models import User
from lamina.identity.secretbox import SecretBox
from lamina.identity.users import NewKey, active_secrets, add_user, create_key


def bootstrap_admin(
    db: Database, box: SecretBox, access_key: str, email: str, known_secret: str | None
) -> NewKey | None:
    """Make sure ``access_key`` is an administrator with a key. Returns a new key, or None
    when ``known_secret`` is already one of theirs (nothing to do)."""
    with db.write() as s:
        user = s.scalar(select(User).where(User.access_key == access_key))
        if user is None:
            _, key = add_user(s, box, access_key=access_key, email=email, role="admin")
            return key
        if user.role != "admin":
            raise InvalidState(f"user {access_key!r} exists and is not an administrator")
        if known_secret is not None and known_secret in active_secrets(s, box, user.id):
            return None
        return create_key(s, box, user)
