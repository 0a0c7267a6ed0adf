"""Turning an error envelope received over HTTP back into the matching LaminaError.

Every class of ``lamina.errors`` that declares its own ``code`` is registered under it, so
an agent's ``guest_not_found`` is a ``GuestNotFound`` in the manager, not just a ``NotFound``,
and the ``except GuestNotFound`` around an agent call runs. A code no class declares (the
``auth_*`` codes of ``AuthenticationFailed``, the HTTP layer's ``method_not_allowed``, a
newer server's) falls back to the class of its status, keeping the code it came with.
"""

from __future__ import annotations

from typing import Any

import httpx

from lamina import errors


def _walk(root: type[errors.LaminaError]) -> list[type[errors.LaminaError]]:
    found, todo = [], [root]
    while todo:
        cls = todo.pop(0)  # parents first
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return found


def build_registry() -> dict[str, type[errors.LaminaError]]:
    """Code → class, for the classes of ``lamina.errors`` that declare a code of their own
    (a subclass that only inherits its parent's code is reached as the parent). Raises
    ``ValueError`` if two classes declare one code: the envelope could not say which."""
    registry: dict[str, type[errors.LaminaError]] = {}
    for cls in _walk(errors.LaminaError):
        if cls.__module__ != errors.__name__ or "code" not in vars(cls):
            continue
        if cls.code in registry:
            raise ValueError(
                f"error code {cls.code!r} is declared by both "
                f"{registry[cls.code].__name__} and {cls.__name__}"
            )
        registry[cls.code] = cls
    return registry


BY_CODE: dict[str, type[errors.LaminaError]] = build_registry()

#: For codes no class declares: the class of the status.
_BY_STATUS: dict[int, type[errors.LaminaError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.QuotaExceeded,
    501: errors.NotSupported,
    503: errors.BackendUnavailable,
    504: errors.Timeout,
}


def error_for(status: int, code: str, message: str, details: dict[str, Any]) -> errors.LaminaError:
    """The exception an envelope stands for."""
    cls = BY_CODE.get(code) or _BY_STATUS.get(status, errors.LaminaError)
    return cls.from_envelope(message, code or cls.code, status, details)


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    details: dict[str, Any] = {}
    try:
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError("not an envelope")
        message = str(body.get("message") or response.reason_phrase)
        code = str(body.get("code") or "")
        if isinstance(body.get("details"), dict):
            details = body["details"]
    except ValueError:
        message, code = response.text[:500] or response.reason_phrase, ""
    raise error_for(response.status_code, code, message, details)
