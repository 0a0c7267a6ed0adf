"""The one error hierarchy of Lamina.

Domain code raises these; the API maps them to HTTP responses by class (see
``lamina.httperrors``), the CLI prints their message. Each kind has a stable ``code``
that clients may match on and an HTTP ``status``.

Every ``code`` belongs to one class, declared here: ``lamina.remote_errors`` rebuilds the
class a server raised from the code in its envelope. A subclass elsewhere that declares no
code of its own (``VolumeNotFound``, ``MirrorsFailed``, ...) shares its parent's and arrives
across the wire as the parent; one that a caller must catch across the wire gets its own
code, here.
"""

from __future__ import annotations

from typing import Any, cast


def excerpt(text: str, limit: int = 32) -> str:
    """``text`` as an error message may repeat it: at most ``limit`` characters, so that a
    client's long header or key is never echoed back (nor logged) whole."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class LaminaError(Exception):
    """Root of every error Lamina raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @classmethod
    def from_envelope(
        cls, message: str, code: str, status: int, details: dict[str, Any]
    ) -> LaminaError:
        """The error a server answered with, rebuilt in the caller without running the
        class's ``__init__`` (whose arguments, such as a guest's name, the envelope does not
        carry one by one): message, code, status and details as the server sent them."""
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        exc.message = message
        exc.details = dict(details)  # as sent, whatever its keys (even "message")
        exc.code = code
        exc.status = status
        return exc

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidRequest(LaminaError):
    status = 400
    code = "invalid_request"


class LocationUnavailable(InvalidRequest):
    """A URL Lamina was asked to fetch could not be fetched: refused by the fetch policy
    (``lamina.fetchpolicy``), unresolvable, unreachable, or answered with an error. One message
    whatever the reason, so the answer maps nothing behind Lamina; the log says why."""

    code = "location_unavailable"

    def __init__(self, message: str = "the location could not be fetched") -> None:
        super().__init__(message)


class Ambiguous(InvalidRequest):
    """A name that several things the caller may see carry: the details list them
    (``candidates``: id and owner of each), so the caller can give the id."""

    code = "ambiguous_name"


class ConfigError(LaminaError):
    """A bad setting; the message names the key."""

    code = "invalid_config"


class Unauthorized(LaminaError):
    status = 401
    code = "unauthorized"


class Forbidden(LaminaError):
    status = 403
    code = "forbidden"


class PathForbidden(Forbidden):
    """A host path outside the folders Lamina may read for its caller (``lamina.fetchpolicy``)."""

    code = "path_forbidden"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "that host path is not in a folder Lamina may read from")


class NotFound(LaminaError):
    status = 404
    code = "not_found"


class Conflict(LaminaError):
    status = 409
    code = "conflict"


class InvalidState(Conflict):
    code = "invalid_state"


class Incompatible(Conflict):
    """What was saved on one host cannot run on another (a checkpoint needing another QEMU,
    machine type or CPU model): the details name each reason."""

    code = "incompatible"


class PayloadTooLarge(LaminaError):
    """A request body over its limit (``manager.max_body_bytes`` but for image uploads)."""

    status = 413
    code = "request_too_large"


class HeadersTooLarge(LaminaError):
    """A request line and headers over ``manager.max_header_bytes``."""

    status = 431
    code = "headers_too_large"


class QuotaExceeded(LaminaError):
    """Taking the resource would put its owner past one of their quotas; ``details`` say
    which (``quota``), the ``limit``, what is ``used`` and what was ``requested``."""

    status = 413
    code = "quota_exceeded"


class TooLarge(LaminaError):
    """A size the backend cannot hold (a configured maximum, the free space of a store or of
    a volume server); ``details`` give the ``limit`` and what was ``requested``."""

    status = 413
    code = "too_large"


class RangeNotSatisfiable(LaminaError):
    """A ``Range`` starting at or past the end of a file; ``details.size`` is its size."""

    status = 416
    code = "range_not_satisfiable"


class NotSupported(LaminaError):
    status = 501
    code = "not_supported"


class VerificationFailed(LaminaError):
    """Something fetched from a channel is not what the channel's key vouches for: a wrong
    signature or a wrong digest. Nothing from it may be used."""

    status = 502
    code = "verification_failed"


class NoCapacity(LaminaError):
    status = 503
    code = "no_capacity"


class HostFull(NoCapacity):
    """The host the caller named has no room for what it asked for: a conflict with that
    host's state (409), where ``NoCapacity`` says the whole cloud is out of room (503).
    ``details``: the ``host``, what was asked and what it has free."""

    status = 409
    code = "host_full"


class BackendUnavailable(LaminaError):
    status = 503
    code = "backend_unavailable"


class Timeout(LaminaError):
    status = 504
    code = "timeout"


class GuestNotFound(NotFound):
    code = "guest_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"guest {name!r} does not exist on this host", guest=name)


class NetworkFailed(LaminaError):
    """Networks a host could not bring up; ``details["networks"]`` maps each network id
    (or ``firewall``) to why. The others are up."""

    code = "network_failed"


class CommandFailed(LaminaError):
    """An external command exited non-zero."""

    code = "command_failed"

    def __init__(self, argv: list[str], returncode: int, stderr: str, stdout: str = "") -> None:
        super().__init__(
            f"{argv[0]} exited with {returncode}: {stderr.strip()[-500:]}",
            argv=argv,
            returncode=returncode,
        )
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout

    @classmethod
    def from_envelope(
        cls, message: str, code: str, status: int, details: dict[str, Any]
    ) -> LaminaError:
        exc = cast(CommandFailed, super().from_envelope(message, code, status, details))
        exc.argv = [str(a) for a in details.get("argv") or []]
        exc.returncode = int(details.get("returncode") or 0)
        exc.stderr = ""  # the message ends with its tail
        exc.stdout = ""
        return exc


class CommandTimeout(Timeout):
    """An external command ran past its timeout and was killed; the message names it, and
    the tail of what it wrote on stderr so far."""

    def __init__(self, argv: list[str], timeout: float, stderr: str = "") -> None:
        tail = stderr.strip()[-500:]
        super().__init__(
            f"{argv[0]} did not finish within {timeout:g}s" + (f": {tail}" if tail else ""),
            argv=argv,
            timeout=timeout,
        )
        self.argv = argv
        self.timeout = timeout
        self.stderr = stderr


class AuthenticationFailed(Forbidden):
    """A request whose caller could not be established; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TooManyRequests(LaminaError):
    status = 429
    code = "too_many_requests"
