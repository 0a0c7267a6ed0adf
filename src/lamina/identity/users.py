"""User accounts and their keys (VISOR's auth system, tables 4.15-4.19)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lamina.db.types import utcnow
from lamina.errors import Conflict, InvalidRequest, InvalidState, NotFound
from lamina.identity.models import QUOTAS, ROLES, User, UserKey
from lamina.identity.quotas import Counter
from lamina.identity.secretbox import SecretBox

ACCESS_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL = re.compile(rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{LABEL}(?:\.{LABEL})*$")
SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass(frozen=True)
class NewKey:
    """A key as made: the only time its secret is seen."""

    id: str
    secret: str


def _check_access_key(access_key: str) -> None:
    if not ACCESS_KEY.match(access_key):
        raise InvalidRequest(
            f"access key {access_key!r} must be 1-64 letters, digits or _.@- "
            "and start with a letter or digit"
        )


def _check_email(email: str) -> None:
    if len(email) > 254 or not EMAIL.match(email):
        raise InvalidRequest(f"email address {email!r} is not valid")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}, not {role!r}")


def _set_quotas(user: User, quotas: dict[str, int | None]) -> None:
    for name, value in quotas.items():
        if name not in QUOTAS:
            raise InvalidRequest(f"unknown quota {name!r}; quotas are {', '.join(QUOTAS)}")
        if value is not None and value < 0:
            raise InvalidRequest(f"quota {name} must be 0 or more (or null for no limit)")
        setattr(user, f"quota_{name}", value)


def access_keys(session: Session, user_ids: Iterable[str | None]) -> dict[str, str]:
    """User id -> access key (a user's name), for showing who owns or did something."""
    wanted = {u for u in user_ids if u}
    if not wanted:
        return {}
    rows = session.execute(select(User.id, User.access_key).where(User.id.in_(wanted)))
    return {user_id: key for user_id, key in rows}


def get_user(session: Session, access_key: str) -> User:
    user = session.scalar(select(User).where(User.access_key == access_key))
    if user is None:
        raise NotFound(f"user {access_key!r} does not exist", user=access_key)
    return user


def list_users(session: Session, **filters: str) -> list[User]:
    query = select(User).order_by(User.access_key)
    for name, value in filters.items():
        if name not in ("access_key", "email", "role"):
            raise InvalidRequest(f"users cannot be filtered by {name!r}")
        query = query.where(getattr(User, name) == value)
    return list(session.scalars(query))


def add_user(
    session: Session,
    box: SecretBox,
    *,
    access_key: str,
    email: str,
    role: str = "member",
    quotas: dict[str, int | None] | None = None,
) -> tuple[User, NewKey]:
    """Register a user with a first secret key."""
    _check_access_key(access_key)
    _check_email(email)
    _check_role(role)
    if session.scalar(select(User.id).where(User.access_key == access_key)):
        raise Conflict(f"access key {access_key!r} is already taken", user=access_key)
    user = User(access_key=access_key, email=email, role=role)
    _set_quotas(user, quotas or {})
    session.add(user)
    session.flush()
    return user, create_key(session, box, user)


def update_user(
    session: Session,
    access_key: str,
    *,
    new_access_key: str | None = None,
    email: str | None = None,
    role: str | None = None,
    quotas: dict[str, int | None] | None = None,
    password: str | None = None,
) -> User:
    user = get_user(session, access_key)
    if new_access_key is not None and new_access_key != user.access_key:
        _check_access_key(new_access_key)
        if session.scalar(select(User.id).where(User.access_key == new_access_key)):
            raise Conflict(f"access key {new_access_key!r} is already taken")
        user.access_key = new_access_key
    if email is not None:
        _check_email(email)
        user.email = email
    if role is not None:
        _check_role(role)
        if user.role == "admin" and role != "admin":
            _keep_an_admin(session, user)
        user.role = role
    if quotas:
        _set_quotas(user, quotas)
    if password is not None:
        user.password_hash = hash_password(password)
    user.updated_at = utcnow()
    return user


def delete_user(session: Session, access_key: str, counters: Mapping[str, Counter]) -> User:
    """Remove a user; refused while they own live instances (as ``counters``' ``instances``
    counts them) or are the last admin."""
    user = get_user(session, access_key)
    owned = counters["instances"](session, user.id)
    if owned:
        raise InvalidState(f"user {access_key!r} still owns {owned} instance(s)")
    if user.role == "admin":
        _keep_an_admin(session, user)
    session.delete(user)
    return user


def clean_users(session: Session, keep: str, counters: Mapping[str, Counter]) -> list[str]:
    """VISOR's ``clean``: delete every user who owns nothing live, except ``keep``."""
    removed = []
    for user in list_users(session):
        if user.id == keep:
            continue
        try:
            with session.begin_nested():
                delete_user(session, user.access_key, counters)
            removed.append(user.access_key)
        except InvalidState:
            continue
    return removed


def _keep_an_admin(session: Session, leaving: User) -> None:
    admins = session.scalar(
        select(func.count()).select_from(User).where(User.role == "admin", User.id != leaving.id)
    )
    if not admins:
        raise InvalidState("Lamina must keep at least one administrator")


def create_key(session: Session, box: SecretBox, user: User) -> NewKey:
    secret = secrets.token_urlsafe(30)
    key = UserKey(user_id=user.id, secret=box.seal(secret))
    session.add(key)
    session.flush()
    return NewKey(key.id, secret)


def list_keys(session: Session, user: User) -> list[UserKey]:
    return list(
        session.scalars(
            select(UserKey).where(UserKey.user_id == user.id).order_by(UserKey.created_at)
        )
    )


def revoke_key(session: Session, user: User, key_id: str) -> UserKey:
    key = session.scalar(select(UserKey).where(UserKey.id == key_id, UserKey.user_id == user.id))
    if key is None:
        raise NotFound(f"user {user.access_key!r} has no key {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def active_secrets(session: Session, box: SecretBox, user_id: str) -> list[str]:
    keys = session.scalars(
        select(UserKey.secret).where(UserKey.user_id == user_id, UserKey.revoked_at.is_(None))
    )
    return [box.open(sealed) for sealed in keys]


def hash_password(password: str) -> str:
    if len(password) < 10:
        raise InvalidRequest("a password needs at least 10 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def check_password(stored: str | None, password: str) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt, digest = stored.split("$")
    computed = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        **SCRYPT,
    )
    return hmac.compare_digest(computed, base64.b64decode(digest))


def describe_user(user: User) -> dict[str, Any]:
    """A user as the API shows it: never a secret."""
    return {
        "id": user.id,
        "access_key": user.access_key,
        "email": user.email,
        "role": user.role,
        "has_password": user.password_hash is not None,
        "quotas": {q: getattr(user, f"quota_{q}") for q in QUOTAS},
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def describe_key(key: UserKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "active": key.revoked_at is None,
    }
