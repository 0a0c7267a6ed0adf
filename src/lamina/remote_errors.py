"""Turning an error envelope received over HTTP back into the matching LaminaError."""

from __future__ import annotations

import httpx

from lamina import errors

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
#: Codes that share a status with another kind, to their own class.
_BY_CODE: dict[str, type[errors.LaminaError]] = {
    "no_capacity": errors.NoCapacity,
    "invalid_state": errors.InvalidState,
    "too_large": errors.TooLarge,
    "request_too_large": errors.PayloadTooLarge,
}


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        message = str(body.get("message") or response.reason_phrase)
        code = str(body.get("code") or "")
    except ValueError:
        message, code = response.text[:500] or response.reason_phrase, ""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code, errors.LaminaError)
    exc = cls.__new__(cls)
    errors.LaminaError.__init__(exc, message)
    exc.code = code or cls.code
    exc.status = response.status_code
    raise exc
