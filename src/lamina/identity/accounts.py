"""Accounts, the use cases a front end calls (the API's ``/users``, ``/session``, a web UI):
users and their keys (administrators only), and web sessions. Each runs its own transaction,
checks who may do it and returns what the API shows; the steps they take on an open session
are ``lamina.identity.users``' and ``lamina.identity.sessions``'.

Identity sits below the manager's container (``lamina.services``), so these functions take
any object with what they use of it (``Container``): ``Services`` is one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import anyio.to_thread

from lamina.config import Settings
from lamina.db import Database
from lamina.errors import AuthenticationFailed, Forbidden, InvalidRequest
from lamina.identity import sessions, users
from lamina.identity.authn import KeyCache
from lamina.identity.principal import Principal
from lamina.identity.quotas import QuotaCounters
from lamina.identity.secretbox import SecretBox


class Container(Protocol):
    """What the account use cases need of the manager's container."""

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def box(self) -> SecretBox: ...

    @property
    def keys(self) -> KeyCache: ...

    @property
    def quotas(self) -> QuotaCounters: ...


def require_admin(who: Principal) -> None:
    """``Forbidden`` unless ``who`` is an administrator."""
    if not who.is_admin:
        raise Forbidden("only administrators may do this")


# -- users and keys (administrators) -------------------------------------------------------
# A change to a user or a key empties the cache of verified keys (``identity.authn``), so it
# applies to the next request.


def list_users(svc: Container, who: Principal, filters: dict[str, str]) -> list[dict[str, Any]]:
    """Every user, by access key; ``filters`` on ``access_key``, ``email`` or ``role``."""
    require_admin(who)
    with svc.db.read() as s:
        return [users.describe_user(u) for u in users.list_users(s, **filters)]


def add_user(
    svc: Container,
    who: Principal,
    *,
    access_key: str,
    email: str,
    role: str = "member",
    quotas: dict[str, int | None] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Register a user; the user and their first secret key (``id``, ``secret``), which is
    shown this once."""
    require_admin(who)
    with svc.db.write() as s:
        user, key = users.add_user(
            s, svc.box, access_key=access_key, email=email, role=role, quotas=quotas
        )
        result = users.describe_user(user), {"id": key.id, "secret": key.secret}
    svc.keys.forget()
    return result


def clean_users(svc: Container, who: Principal) -> list[str]:
    """VISOR's ``clean``: delete every user who owns nothing, except ``who``; their access
    keys."""
    require_admin(who)
    with svc.db.write() as s:
        removed = users.clean_users(s, keep=who.user_id, counters=svc.quotas)
    svc.keys.forget()
    return removed


def show_user(svc: Container, who: Principal, access_key: str) -> dict[str, Any]:
    """A user with their keys (never a secret)."""
    require_admin(who)
    with svc.db.read() as s:
        user = users.get_user(s, access_key)
        keys = [users.describe_key(k) for k in users.list_keys(s, user)]
        return {**users.describe_user(user), "keys": keys}


def update_user(
    svc: Container,
    who: Principal,
    access_key: str,
    *,
    new_access_key: str | None = None,
    email: str | None = None,
    role: str | None = None,
    quotas: dict[str, int | None] | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    """Change a user's access key, email, role, quotas or password."""
    require_admin(who)
    with svc.db.write() as s:
        user = users.update_user(
            s, access_key, new_access_key=new_access_key, email=email, role=role,
            quotas=quotas, password=password,
        )  # fmt: skip
        result = users.describe_user(user)
    svc.keys.forget()
    return result


def delete_user(svc: Container, who: Principal, access_key: str) -> dict[str, Any]:
    """Remove a user (refused while they own live instances or are the last admin); the
    removed account."""
    require_admin(who)
    with svc.db.write() as s:
        result = users.describe_user(users.delete_user(s, access_key, svc.quotas))
    svc.keys.forget()
    return result


def create_key(svc: Container, who: Principal, access_key: str) -> dict[str, str]:
    """Another secret key for a user (for rotation): ``id`` and ``secret``, shown this once."""
    require_admin(who)
    with svc.db.write() as s:
        key = users.create_key(s, svc.box, users.get_user(s, access_key))
        result = {"id": key.id, "secret": key.secret}
    svc.keys.forget()
    return result


def revoke_key(svc: Container, who: Principal, access_key: str, key_id: str) -> dict[str, Any]:
    """Revoke one of a user's keys; the key as it now is."""
    require_admin(who)
    with svc.db.write() as s:
        result = users.describe_key(users.revoke_key(s, users.get_user(s, access_key), key_id))
    svc.keys.forget()
    return result


# -- web sessions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """A web session just opened: the cookie's ``token`` (shown once), how long it lasts and
    the session as the API shows it."""

    token: str
    lifetime: timedelta
    session: dict[str, Any]


async def login(svc: Container, *, access_key: str, secret: str, remote_addr: str | None) -> Login:
    """Open a web session for ``access_key`` with ``secret`` (a secret key, or the user's
    password). ``AuthenticationFailed`` for wrong credentials, counted (with a growing
    lockout, ``TooManyRequests``)."""
    cfg = svc.settings.identity
    lifetime = timedelta(hours=cfg.session_hours)

    def open_session() -> tuple[str, Any, Any] | None:
        with svc.db.write() as s:
            return sessions.login(
                s,
                svc.box,
                access_key=access_key,
                secret=secret,
                remote_addr=remote_addr,
                lifetime=lifetime,
                threshold=cfg.lockout_threshold,
                base_delay=cfg.lockout_seconds,
                max_delay=cfg.lockout_max_seconds,
            )

    opened = await anyio.to_thread.run_sync(open_session)
    if opened is None:
        raise AuthenticationFailed("auth_login", sessions.WRONG_LOGIN)
    token, web, user = opened
    shown = {
        "user": user.access_key,
        "role": user.role,
        "csrf_token": web.csrf_token,
        "expires_at": web.expires_at,
    }
    return Login(token, lifetime, shown)


def current_session(svc: Container, who: Principal, token: str | None) -> dict[str, Any]:
    """The web session ``who`` called in (its cookie's ``token``) and its CSRF token (for a
    page that was reloaded)."""
    if who.via != "session" or token is None:
        raise InvalidRequest("this request is not part of a web session")
    with svc.db.read() as s:
        _, web = sessions.resume(s, token)
        return {
            "user": who.access_key,
            "csrf_token": web.csrf_token,
            "expires_at": web.expires_at,
        }


def logout(svc: Container, token: str | None) -> None:
    """End the web session of the cookie's ``token`` (nothing if there is none)."""
    if token:
        with svc.db.write() as s:
            sessions.logout(s, token)
