"""Web sessions: login with an access key and a secret key or password, a cookie, a CSRF
token, expiry, and a growing lock-out delay after repeated failures."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lamina.db.types import utcnow
from lamina.errors import AuthenticationFailed, TooManyRequests
from lamina.identity.models import LoginFailure, User, WebSession
from lamina.identity.principal import Principal
from lamina.identity.secretbox import SecretBox
from lamina.identity.users import active_secrets, check_password

COOKIE = "lamina_session"
#: Failed logins further apart than this start the count again.
FAILURE_MEMORY = timedelta(hours=1)
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def login(
    session: Session,
    box: SecretBox,
    *,
    access_key: str,
    secret: str,
    remote_addr: str | None,
    lifetime: timedelta,
    threshold: int,
    base_delay: float,
    max_delay: float,
) -> tuple[str, WebSession, User] | None:
    """Open a session; return the cookie's token (shown once), the session and its user, or
    None for wrong credentials, after counting the failure (the caller commits it)."""
    now = utcnow()
    failure = session.get(LoginFailure, access_key, with_for_update=True)
    if failure and failure.last_failure_at and now - failure.last_failure_at > FAILURE_MEMORY:
        failure.failures, failure.locked_until = 0, None  # old failures are forgiven
    if failure and failure.locked_until and failure.locked_until > now:
        wait = int((failure.locked_until - now).total_seconds()) + 1
        raise TooManyRequests(
            f"too many failed logins for this access key: try again in {wait}s", retry_after=wait
        )
    user = session.scalar(select(User).where(User.access_key == access_key))
    ok = False
    if user is not None:
        ok = check_password(user.password_hash, secret)
        for candidate in active_secrets(session, box, user.id):
            ok |= hmac.compare_digest(candidate.encode(), secret.encode())
    if user is None or not ok:
        failure = failure or LoginFailure(access_key=access_key, failures=0)
        failure.failures += 1
        failure.last_failure_at = now
        if failure.failures >= threshold:
            delay = min(base_delay * 2 ** (failure.failures - threshold), max_delay)
            failure.locked_until = now + timedelta(seconds=delay)
        session.merge(failure)
        return None
    if failure is not None:
        session.delete(failure)
    token = secrets.token_urlsafe(32)
    web = WebSession(
        id=_token_id(token),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(24),
        remote_addr=remote_addr,
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(web)
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    return token, web, user


WRONG_LOGIN = "wrong access key, secret key or password"  # the same whether the user exists


def logout(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.id == _token_id(token)))


def resume(session: Session, token: str) -> tuple[Principal, WebSession]:
    """The principal behind a session cookie."""
    web = session.get(WebSession, _token_id(token))
    if web is None or web.expires_at < utcnow():
        raise AuthenticationFailed("auth_session", "the session has expired or ended: log in again")
    user = session.get(User, web.user_id)
    if user is None:
        raise AuthenticationFailed("auth_session", "the session's user no longer exists")
    return Principal(user.id, user.access_key, user.role, "session"), web


def check_csrf(web: WebSession, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(sent, web.csrf_token):
        raise AuthenticationFailed(
            "csrf_failed",
            f"a state-changing request in a web session needs the session's CSRF token "
            f"(form field {CSRF_FIELD!r} or header X-CSRF-Token)",
        )
