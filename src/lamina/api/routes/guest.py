"""``/guest``: the configuration service's routes, authenticated by instance tokens (not
users' signatures): JSON under ``/guest/v1`` and XML-RPC at ``/guest/RPC2``; a thin layer over
``lamina.guest.service`` and ``lamina.guest.xmlrpc``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from lamina.api.deps import services
from lamina.guest import service
from lamina.guest.xmlrpc import MAX_CALL, handle_call
from lamina.services import Services

guest = APIRouter(prefix="/guest", tags=["configuration service"])
#: Set by the host's relay; a request that did not come through one has none.
GUEST_ADDRESS = "x-lamina-guest-address"


class StatusBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str = Field(min_length=1, max_length=service.MAX_STATUS)


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(min_length=1, max_length=32)


def _token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-lamina-instance-token")


def _guest(request: Request) -> service.Guest:
    return service.Guest(_token(request), request.headers.get(GUEST_ADDRESS))


@guest.get("/v1/instances/{ref}")
def get_instance(ref: str, request: Request, svc: Services = Depends(services)) -> Any:
    """The instance's own record: names, addresses, variables, configuration items."""
    return {"instance": service.show_instance(svc, _guest(request), ref)}


@guest.put("/v1/instances/{ref}/status")
def put_status(
    ref: str, body: StatusBody, request: Request, svc: Services = Depends(services)
) -> Any:
    """Report the instance's own status (shown as ``guest_status`` in ``instance show``)."""
    return service.update_status(svc, _guest(request), ref, body.status)


@guest.post("/v1/instances/{ref}/actions", status_code=202)
def post_action(
    ref: str, body: ActionBody, request: Request, svc: Services = Depends(services)
) -> Any:
    """Ask for an action on the instance itself (``reboot``, ``stop``)."""
    return service.ask(svc, _guest(request), ref, body.action)


@guest.post(
    "/RPC2",
    response_class=Response,
    responses={200: {"content": {"text/xml": {"schema": {"type": "string"}}}}},
)
async def xmlrpc(request: Request, svc: Services = Depends(services)) -> Response:
    """STORM's XML-RPC interface; a refusal is an XML-RPC fault (code = the HTTP status)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_CALL:
            break
    answer = await run_in_threadpool(
        handle_call, svc, bytes(body), request.headers.get(GUEST_ADDRESS)
    )
    return Response(answer, media_type="text/xml")
