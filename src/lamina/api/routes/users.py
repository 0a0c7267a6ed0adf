"""``/users`` (admins only, VISOR's auth API, table 4.16), ``/session`` (web login) and
``/whoami``: a thin layer over ``lamina.identity.accounts``."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.auth import admin, principal
from lamina.api.deps import services
from lamina.errors import InvalidRequest
from lamina.identity import accounts, sessions
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


@users_router.get("")
def list_users(
    request: Request, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    return {"users": accounts.list_users(svc, who, dict(request.query_params))}


@users_router.post("", status_code=201)
def add_user(
    body: UserCreate, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Register a user; the answer carries their first secret key, shown this once."""
    quotas = body.quotas.model_dump(exclude_unset=True) if body.quotas else None
    user, key = accounts.add_user(
        svc, who, access_key=body.access_key, email=body.email, role=body.role, quotas=quotas
    )
    return {"user": user, "key": key}


@users_router.delete("")
def clean_users(svc: Services = Depends(services), who: Principal = Depends(admin)) -> Any:
    """VISOR's ``clean``: delete every user who owns nothing, except the caller."""
    return {"deleted": accounts.clean_users(svc, who)}


@users_router.get("/{access_key}")
def get_user(
    access_key: str, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    return {"user": accounts.show_user(svc, who, access_key)}


@users_router.put("/{access_key}")
def update_user(
    access_key: str,
    body: UserUpdate,
    svc: Services = Depends(services),
    who: Principal = Depends(admin),
) -> Any:
    quotas = body.quotas.model_dump(exclude_unset=True) if body.quotas else None
    user = accounts.update_user(
        svc, who, access_key, new_access_key=body.access_key, email=body.email, role=body.role,
        quotas=quotas, password=body.password,
    )  # fmt: skip
    return {"user": user}


@users_router.delete("/{access_key}")
def delete_user(
    access_key: str, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Remove a user; the answer is the removed account."""
    return {"user": accounts.delete_user(svc, who, access_key)}


@users_router.post("/{access_key}/keys", status_code=201)
def create_key(
    access_key: str, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Another secret key (for rotation); shown this once."""
    return {"key": accounts.create_key(svc, who, access_key)}


@users_router.delete("/{access_key}/keys/{key_id}")
def revoke_key(
    access_key: str,
    key_id: str,
    svc: Services = Depends(services),
    who: Principal = Depends(admin),
) -> Any:
    return {"key": accounts.revoke_key(svc, who, access_key, key_id)}


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
    return {"session": accounts.current_session(svc, who, request.cookies.get(sessions.COOKIE))}


@me_router.delete("/session")
def logout(
    request: Request,
    response: Response,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    accounts.logout(svc, request.cookies.get(sessions.COOKIE))
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
    opened = await accounts.login(
        svc,
        access_key=access_key,
        secret=secret,
        remote_addr=request.client.host if request.client else None,
    )
    response.set_cookie(
        sessions.COOKIE,
        opened.token,
        max_age=int(opened.lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return {"session": opened.session}
