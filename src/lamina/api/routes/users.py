"""``/users`` (admins only, VISOR's auth API, table 4.16), ``/session`` (web login) and
``/whoami``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from lamina.api.auth import admin, principal
from lamina.api.deps import services
from lamina.errors import AuthenticationFailed, InvalidRequest
from lamina.identity import sessions, users
from lamina.identity.principal import Principal
from lamina.services import Services

users_router = APIRouter(prefix="/users", tags=["users"])
me_router = APIRouter(tags=["users"])
login_router = APIRouter(tags=["users"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Quotas(Body):
    instances: int | None = Field(None, ge=0)
    vcpus: int | None = Field(None, ge=0)
    memory_mib: int | None = Field(None, ge=0)
    image_bytes: int | None = Field(None, ge=0)
    volume_bytes: int | None = Field(None, ge=0)


class UserCreate(Body):
    access_key: str = Field(min_length=1, max_length=64)
    email: str = Field(max_length=254)
    role: Literal["admin", "member"] = "member"
    quotas: Quotas | None = None


class UserUpdate(Body):
    access_key: str | None = Field(None, min_length=1, max_length=64)
    email: str | None = Field(None, max_length=254)
    role: Literal["admin", "member"] | None = None
    quotas: Quotas | None = None
    password: str | None = Field(None, max_length=1024)


def _forget(svc: Services) -> None:
    svc.keys.forget()


@users_router.get("")
def list_users(
    request: Request, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    filters = dict(request.query_params)
    with svc.db.read() as s:
        return {"users": [users.describe_user(u) for u in users.list_users(s, **filters)]}


@users_router.post("", status_code=201)
def add_user(
    body: UserCreate, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Register a user; the answer carries their first secret key, shown this once."""
    quotas = body.quotas.model_dump(exclude_unset=True) if body.quotas else None
    with svc.db.write() as s:
        user, key = users.add_user(
            s,
            svc.box,
            access_key=body.access_key,
            email=body.email,
            role=body.role,
            quotas=quotas,
        )
        result = {"user": users.describe_user(user), "key": {"id": key.id, "secret": key.secret}}
    _forget(svc)
    return result


@users_router.delete("")
def clean_users(svc: Services = Depends(services), who: Principal = Depends(admin)) -> Any:
    """VISOR's ``clean``: delete every user who owns nothing, except the caller."""
    with svc.db.write() as s:
        removed = users.clean_users(s, keep=who.user_id, counters=svc.quotas)
    _forget(svc)
    return {"deleted": removed}


@users_router.get("/{access_key}")
def get_user(
    access_key: str, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    with svc.db.read() as s:
        user = users.get_user(s, access_key)
        keys = [users.describe_key(k) for k in users.list_keys(s, user)]
        return {"user": {**users.describe_user(user), "keys": keys}}


@users_router.put("/{access_key}")
def update_user(
    access_key: str,
    body: UserUpdate,
    svc: Services = Depends(services),
    who: Principal = Depends(admin),
) -> Any:
    quotas = body.quotas.model_dump(exclude_unset=True) if body.quotas else None
    with svc.db.write() as s:
        user = users.update_user(
            s,
            access_key,
            new_access_key=body.access_key,
            email=body.email,
            role=body.role,
            quotas=quotas,
            password=body.password,
        )
        result = {"user": users.describe_user(user)}
    _forget(svc)
    return result


@users_router.delete("/{access_key}")
def delete_user(
    access_key: str, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Remove a user; the answer is the removed account."""
    with svc.db.write() as s:
        result = {"user": users.describe_user(users.delete_user(s, access_key, svc.quotas))}
    _forget(svc)
    return result


@users_router.post("/{access_key}/keys", status_code=201)
def create_key(
    access_key: str, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Another secret key (for rotation); shown this once."""
    with svc.db.write() as s:
        key = users.create_key(s, svc.box, users.get_user(s, access_key))
        result = {"key": {"id": key.id, "secret": key.secret}}
    _forget(svc)
    return result


@users_router.delete("/{access_key}/keys/{key_id}")
def revoke_key(
    access_key: str,
    key_id: str,
    svc: Services = Depends(services),
    who: Principal = Depends(admin),
) -> Any:
    with svc.db.write() as s:
        key = users.revoke_key(s, users.get_user(s, access_key), key_id)
        result = {"key": users.describe_key(key)}
    _forget(svc)
    return result


@me_router.get("/whoami")
def whoami(who: Principal = Depends(principal)) -> Any:
    return {
        "user": {
            "id": who.user_id,
            "access_key": who.access_key,
            "role": who.role,
            "authenticated_by": who.via,
        }
    }


@me_router.get("/session")
def session_info(
    request: Request, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """The current web session and its CSRF token (for a page that was reloaded)."""
    token = request.cookies.get(sessions.COOKIE)
    if who.via != "session" or token is None:
        raise InvalidRequest("this request is not part of a web session")
    with svc.db.read() as s:
        _, web = sessions.resume(s, token)
        return {
            "session": {
                "user": who.access_key,
                "csrf_token": web.csrf_token,
                "expires_at": web.expires_at,
            }
        }


@me_router.delete("/session")
def logout(
    request: Request,
    response: Response,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    token = request.cookies.get(sessions.COOKIE)
    if token:
        with svc.db.write() as s:
            sessions.logout(s, token)
    response.delete_cookie(sessions.COOKIE, path="/")
    return {"session": None}


@login_router.post("/session", status_code=201)
async def login(request: Request, response: Response) -> Any:
    """Log in with ``access_key`` and ``secret`` (a secret key, or the user's password), as
    JSON or as a form. Sets an HTTP-only, SameSite=Strict session cookie (Secure over
    HTTPS) and answers the CSRF token every state-changing request of the session must carry."""
    svc: Services = request.app.state.services
    if request.headers.get("content-type", "").startswith("application/json"):
        data = await request.json()
    else:
        data = dict(await request.form())
    access_key, secret = data.get("access_key"), data.get("secret")
    if not isinstance(access_key, str) or not isinstance(secret, str):
        raise InvalidRequest("log in with the fields access_key and secret")
    cfg = svc.settings.identity
    lifetime = timedelta(hours=cfg.session_hours)

    def open_session() -> tuple[str, Any, Any] | None:
        with svc.db.write() as s:
            return sessions.login(
                s,
                svc.box,
                access_key=access_key,
                secret=secret,
                remote_addr=request.client.host if request.client else None,
                lifetime=lifetime,
                threshold=cfg.lockout_threshold,
                base_delay=cfg.lockout_seconds,
                max_delay=cfg.lockout_max_seconds,
            )

    opened = await run_in_threadpool(open_session)
    if opened is None:
        raise AuthenticationFailed("auth_login", sessions.WRONG_LOGIN)
    token, web, user = opened
    response.set_cookie(
        sessions.COOKIE,
        token,
        max_age=int(lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return {
        "session": {
            "user": user.access_key,
            "role": user.role,
            "csrf_token": web.csrf_token,
            "expires_at": web.expires_at,
        }
    }
