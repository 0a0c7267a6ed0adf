"""Where authentication plugs in: ``AuthenticationMiddleware`` establishes the caller of
every request but those of the public routes (/health, host enrolment, /ca.pem, login and the
configuration service), from the headers alone, before a route (or FastAPI, which reads and
parses a JSON body before it runs any dependency) reads a byte of the body:

- a signed request is verified from its headers, the body's declared SHA-256 among them; only
  then is the body read, up to ``manager.max_body_bytes``, and checked against that hash. A
  body declared ``UNSIGNED-PAYLOAD`` is left for the route to stream, and only a route marked
  ``streamed_upload`` with ``Content-Type: application/octet-stream`` exactly may have one;
- a web session is resumed from its cookie, and its CSRF token checked (read from a form's
  body only once the session is known).

Every other router depends on ``principal``, which then only hands the established caller to
the route (``admin`` also checks the role)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina.api.edge import OCTET_STREAM, body_guard, media_type
from lamina.errors import AuthenticationFailed, LaminaError, PayloadTooLarge
from lamina.identity.accounts import require_admin
from lamina.identity.authn import parse_authorization, verify_signature
from lamina.identity.models import WebSession
from lamina.identity.principal import Principal
from lamina.identity.sessions import COOKIE, CSRF_FIELD, CSRF_HEADER, check_csrf, resume
from lamina.identity.signing import UNSIGNED
from lamina.services import Services

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: An upload whose body is signed by its hash (not UNSIGNED-PAYLOAD) is read into memory to
#: check it, once its caller is authenticated: up to this much (or manager.max_body_bytes if
#: larger). Bigger files travel as UNSIGNED-PAYLOAD with their checksum in a signed header.
MAX_SIGNED_UPLOAD = 8 * 2**20
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
_STREAMS = "_lamina_streamed_upload"
F = TypeVar("F", bound=Callable[..., Any])


def streamed_upload(endpoint: F) -> F:
    """Mark a route that streams its request body (image data): it alone may take a body
    declared ``UNSIGNED-PAYLOAD`` (with ``Content-Type: application/octet-stream``), and a
    body larger than ``manager.max_body_bytes``; both only once the caller is authenticated."""
    setattr(endpoint, _STREAMS, True)
    return endpoint


async def principal(request: Request) -> Principal:
    """Who is calling, as established before the route ran (``AuthenticationMiddleware``)."""
    who = request.scope.get("state", {}).get("principal")
    if not isinstance(who, Principal):
        # A route that depends on this but is public to the middleware: fail closed.
        raise RuntimeError(f"{request.url.path} was not authenticated before its route")
    return who


async def admin(who: Principal = Depends(principal)) -> Principal:
    """``principal``, for routes that only administrators may use (FastAPI runs
    ``principal`` once per request, however many dependencies ask for it)."""
    require_admin(who)
    return who


@dataclass(frozen=True)
class RouteRule:
    """A route's path pattern and methods, to tell before routing which route a request is
    for (Starlette's own matching of FastAPI's routes depends on how they were included)."""

    path_regex: re.Pattern[str]
    methods: frozenset[str]

    def matches(self, scope: Scope) -> bool:
        return scope["method"] in self.methods and bool(self.path_regex.match(scope["path"]))


def route_rules(routers: Iterable[APIRouter], only_uploads: bool = False) -> list[RouteRule]:
    return [
        RouteRule(route.path_regex, frozenset(route.methods or ()))
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        and (not only_uploads or getattr(route.endpoint, _STREAMS, False))
    ]


class AuthenticationMiddleware:
    """Pure ASGI, inside the edge and the audit: establishes the caller of every request but
    those of the ``public`` routes, from the headers, before anything reads the body (see the
    module's docstring). A refusal is answered here, in the error envelope."""

    def __init__(self, app: ASGIApp, *, public: list[RouteRule], uploads: list[RouteRule]) -> None:
        self.app = app
        self.public = public
        self.uploads = uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(rule.matches(scope) for rule in self.public):
            await self.app(scope, receive, send)
            return
        streams = any(rule.matches(scope) for rule in self.uploads)
        try:
            who, receive = await authenticate(Request(scope, receive), receive, streams=streams)
        except ClientDisconnect:
            return
        except LaminaError as exc:
            await JSONResponse(exc.to_dict(), status_code=exc.status)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = who
        await self.app(scope, receive, send)


async def authenticate(
    request: Request, receive: Receive, *, streams: bool
) -> tuple[Principal, Receive]:
    """The caller, and what the route is to receive its body from (the body already read and
    checked, or the original stream for an upload). Raises 403 ``AuthenticationFailed``."""
    svc: Services = request.app.state.services
    authorization = request.headers.get("authorization")
    token = request.cookies.get(COOKIE)
    if authorization:
        return await _signed(svc, request, receive, authorization, streams)
    if token:
        return await _from_session(svc, request, receive, token, streams)
    raise AuthenticationFailed(
        "auth_missing",
        "authorization not provided: sign the request (Authorization: LAMINA "
        "<access_key>:<signature>) or log in for a web session",
    )


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "transfer-encoding" in request.headers or bool(length and length != "0")


def _is_upload(request: Request, streams: bool) -> bool:
    return streams and media_type(request.headers.get("content-type")) == OCTET_STREAM


async def _signed(
    svc: Services, request: Request, receive: Receive, authorization: str, streams: bool
) -> tuple[Principal, Receive]:
    state = request.scope.setdefault("state", {})
    claim = parse_authorization(authorization)
    state["claimed"] = claim.access_key
    raw_path = request.scope.get("raw_path") or request.url.path.encode()

    def check() -> tuple[Principal, str | None]:
        return verify_signature(
            svc.keys,
            claim=claim,
            method=request.method,
            path=raw_path.decode("latin-1"),
            query=request.scope["query_string"].decode("latin-1"),
            headers=request.headers,
            has_body=_has_body(request),
            visor=svc.settings.identity.visor_signatures,
        )

    # A cached key makes the check pure computation (tens of microseconds): cheaper on the
    # event loop than a hop to the thread pool. Only a database read goes there.
    who, declared = check() if svc.keys.fresh(claim.access_key) else await run_in_threadpool(check)
    if declared is None:  # VISOR: no body, checked by verify_signature
        return who, receive
    if declared == UNSIGNED:
        if not _is_upload(request, streams):
            raise AuthenticationFailed(
                "auth_bad_body",
                f"{UNSIGNED} is accepted only for image uploads (the routes that take image "
                f"data) with Content-Type: {OCTET_STREAM}",
            )
        _lift(request)
        return who, receive
    limit = svc.settings.manager.max_body_bytes
    if _is_upload(request, streams):
        limit = max(limit, MAX_SIGNED_UPLOAD)
        _lift(request, limit)
    body = await _read_body(receive, limit)
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest().encode(), declared.encode()):
        raise AuthenticationFailed(
            "auth_bad_body", "the body does not match its X-Lamina-Content-SHA256"
        )
    return who, _replay(body, receive)


async def _from_session(
    svc: Services, request: Request, receive: Receive, token: str, streams: bool
) -> tuple[Principal, Receive]:
    def load() -> tuple[Principal, WebSession]:
        with svc.db.read() as s:
            return resume(s, token)

    who, web = await run_in_threadpool(load)
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and media_type(request.headers.get("content-type")) in FORMS:
            original = receive
            body = await _read_body(original, svc.settings.manager.max_body_bytes)
            receive = _replay(body, original)
            form = await Request(request.scope, _replay(body, original)).form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        check_csrf(web, sent)
    if _is_upload(request, streams):
        _lift(request)
    return who, receive


def _lift(request: Request, limit: int | None = None) -> None:
    guard = body_guard(request.scope)
    if guard is not None:
        guard.lift(limit)


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (the edge counts it too, and answers first)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request's body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then waits on the connection (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
