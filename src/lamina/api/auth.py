"""Where authentication plugs in: ``create_app`` makes every router except /health, host
enrolment and login depend on ``principal``, which establishes the caller from a signed
request or a web session (with its CSRF token on state-changing requests)."""

from __future__ import annotations

from functools import partial

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from lamina.errors import AuthenticationFailed, Forbidden
from lamina.identity.authn import verify_signature
from lamina.identity.models import WebSession
from lamina.identity.principal import Principal
from lamina.identity.sessions import COOKIE, CSRF_FIELD, CSRF_HEADER, check_csrf, resume
from lamina.identity.signing import BODY_HEADER, UNSIGNED
from lamina.services import Services

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: Signed bodies are hashed in memory to check them; anything bigger is streamed unsigned.
MAX_SIGNED_BODY = 8 * 2**20


async def principal(request: Request) -> Principal:
    """Who is calling; raises 403 ``AuthenticationFailed`` saying why not."""
    svc: Services = request.app.state.services
    authorization = request.headers.get("authorization")
    token = request.cookies.get(COOKIE)
    if authorization:
        request.state.claimed = authorization.partition(" ")[2].rpartition(":")[0] or None
        streamed = request.headers.get("content-type", "").startswith("application/octet-stream")
        # A streamed upload that declares UNSIGNED-PAYLOAD is read by its handler, which
        # checks the checksum the client declares; any other body is hashed here.
        unsigned = request.headers.get(BODY_HEADER.lower()) == UNSIGNED
        length = int(request.headers.get("content-length") or 0)
        if not unsigned and (length > MAX_SIGNED_BODY or "transfer-encoding" in request.headers):
            raise AuthenticationFailed(
                "auth_bad_body",
                f"a body over {MAX_SIGNED_BODY // 2**20} MiB, or of unknown length, must be a "
                f"streamed upload: Content-Type application/octet-stream, {BODY_HEADER}: "
                f"{UNSIGNED}, and its checksum declared (X-Image-Meta-Sha256)",
            )
        body = b"" if streamed and unsigned else await request.body()
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        check = partial(
            verify_signature,
            svc.keys,
            authorization=authorization,
            method=request.method,
            path=raw_path.decode("latin-1"),
            query=request.scope["query_string"].decode("latin-1"),
            headers=request.headers,
            body=body,
            streamed_upload=streamed,
        )
        # A cached key makes the check pure computation (tens of microseconds): cheaper on
        # the event loop than a hop to the thread pool. Only a database read goes there.
        cached = svc.keys.fresh(request.state.claimed or "")
        who = check() if cached else await run_in_threadpool(check)
    elif token:
        who = await _from_session(svc, request, token)
    else:
        raise AuthenticationFailed(
            "auth_missing",
            "authorization not provided: sign the request (Authorization: LAMINA "
            "<access_key>:<signature>) or log in for a web session",
        )
    request.state.principal = who
    return who


async def _from_session(svc: Services, request: Request, token: str) -> Principal:
    def load() -> tuple[Principal, WebSession]:
        with svc.db.read() as s:
            return resume(s, token)

    who, web = await run_in_threadpool(load)
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        check_csrf(web, sent)
    return who


def require_admin(who: Principal) -> None:
    if not who.is_admin:
        raise Forbidden("only administrators may do this")


async def admin(who: Principal = Depends(principal)) -> Principal:
    """``principal``, for routes that only administrators may use (FastAPI runs
    ``principal`` once per request, however many dependencies ask for it)."""
    require_admin(who)
    return who
