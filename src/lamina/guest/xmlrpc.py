"""The configuration service over XML-RPC, for STORM's appliances (standard library
``xmlrpc``, its parser hardened by defusedxml: no DTDs, entities or external references,
and a size limit). Every method takes the instance token first and the instance second
(``"self"`` for the token's own); a refusal is a fault whose code is the HTTP status the
JSON routes would answer.

    lamina.get_instance(token, instance)             -> struct (as GET /guest/v1/instances/..)
    lamina.get_variables(token, instance)            -> struct of the instance variables
    lamina.get_config(token, instance)               -> struct of the configuration items
    lamina.report_status(token, instance, status)    -> true
    lamina.request_action(token, instance, action)   -> struct {"job": id}
    system.listMethods()                             -> the names above
"""

from __future__ import annotations

import logging
import xmlrpc.client
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from xml.parsers.expat import ExpatError

from defusedxml import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser
from sqlalchemy.orm import Session

from lamina.errors import InvalidRequest, LaminaError
from lamina.guest import service

if TYPE_CHECKING:
    from lamina.compute.models import Instance
    from lamina.services import Services

log = logging.getLogger(__name__)
#: Bytes of a method call: far more than any call here needs.
MAX_CALL = 64 * 1024


def _get_instance(svc: Services, s: Session, me: Instance) -> Any:
    return service.view(s, me, svc.settings.network.domain)


def _get_variables(svc: Services, s: Session, me: Instance) -> Any:
    return dict(me.variables or {})


def _get_config(svc: Services, s: Session, me: Instance) -> Any:
    return dict(me.config or {})


def _report_status(svc: Services, s: Session, me: Instance, status: str) -> Any:
    service.report_status(me, _text(status, "status"))
    return True


def _request_action(svc: Services, s: Session, me: Instance, action: str) -> Any:
    answer = service.request_action(svc, s, me, _text(action, "action"))
    return {"job": answer["job"]["id"]}


#: name -> (function, its arguments after token and instance, whether it writes)
METHODS: dict[str, tuple[Callable[..., Any], tuple[str, ...], bool]] = {
    "lamina.get_instance": (_get_instance, (), False),
    "lamina.get_variables": (_get_variables, (), False),
    "lamina.get_config": (_get_config, (), False),
    "lamina.report_status": (_report_status, ("status",), True),
    "lamina.request_action": (_request_action, ("action",), True),
}


def _text(value: Any, label: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{label} must be a string")
    return value


def parse_call(body: bytes) -> tuple[str, tuple[Any, ...]]:
    """(method, params) of a methodCall, parsed without entity expansion or DTDs;
    ``InvalidRequest`` for anything else."""
    if len(body) > MAX_CALL:
        raise InvalidRequest(f"an XML-RPC call is at most {MAX_CALL} bytes")
    unmarshaller = xmlrpc.client.Unmarshaller()
    parser = DefusedExpatParser(unmarshaller)
    try:
        parser.feed(body)
        parser.close()
        params = unmarshaller.close()
    except (DefusedXmlException, ExpatError, xmlrpc.client.ResponseError, ValueError,
            TypeError, KeyError, IndexError) as exc:  # fmt: skip
        raise InvalidRequest(f"not an XML-RPC method call: {type(exc).__name__}: {exc}") from None
    method = unmarshaller.getmethodname()
    if not method:
        raise InvalidRequest("not an XML-RPC method call: no methodName")
    return method, params


def handle_call(svc: Services, body: bytes, guest_address: str | None) -> bytes:
    """The methodResponse (or fault) for a methodCall."""
    try:
        method, params = parse_call(body)
        result = _dispatch(svc, method, params, guest_address)
        text = xmlrpc.client.dumps((_plain(result),), methodresponse=True, allow_none=True)
    except LaminaError as exc:
        text = xmlrpc.client.dumps(xmlrpc.client.Fault(exc.status, exc.message))
    except Exception:  # noqa: BLE001 - a fault, never a traceback, for the guest
        log.exception("XML-RPC call failed")
        text = xmlrpc.client.dumps(xmlrpc.client.Fault(500, "internal error"))
    return text.encode()


def _dispatch(svc: Services, method: str, params: tuple[Any, ...], address: str | None) -> Any:
    if method == "system.listMethods":
        return sorted([*METHODS, "system.listMethods"])
    if method not in METHODS:
        raise InvalidRequest(f"unknown method {method!r}; see system.listMethods")
    function, extra, writes = METHODS[method]
    names = ("token", "instance", *extra)
    if len(params) != len(names):
        raise InvalidRequest(f"{method} takes {len(names)} arguments: {', '.join(names)}")
    token, ref, *rest = params
    with svc.db.write() if writes else svc.db.read() as s:
        me = service.caller(svc, s, _text(token, "token"), address)
        result = function(svc, s, service.target(me, _text(ref, "instance")), *rest)
    if writes:
        svc.wake_jobs()
    return result


def _plain(value: Any) -> Any:
    """What XML-RPC can carry: datetimes as ISO text, no None inside structs."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
