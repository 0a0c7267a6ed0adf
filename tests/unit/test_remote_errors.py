"""Errors cross the wire exactly: every LaminaError a server raises is, in the caller, the
same class with the same code, status, message and details (``lamina.remote_errors``)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import lamina
from lamina import errors
from lamina.channels.mirrors import MirrorsFailed
from lamina.formats.xmlsafe import XMLInvalid
from lamina.httperrors import install_error_handlers
from lamina.remote_errors import BY_CODE, build_registry, raise_for_error
from lamina.stores.http import NoImageFile
from lamina.volumes.service import SnapshotNotFound, VolumeNotFound


def _all_error_classes() -> list[type[errors.LaminaError]]:
    """Every LaminaError class of Lamina, wherever it is declared (all modules imported)."""
    for module in pkgutil.walk_packages(lamina.__path__, "lamina."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: list[type[errors.LaminaError]] = []
    todo: list[type[errors.LaminaError]] = [errors.LaminaError]
    while todo:
        cls = todo.pop(0)
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return [c for c in found if c.__module__.startswith("lamina.")]


#: Classes whose ``__init__`` takes other arguments than ``(message, **details)``.
SAMPLES: dict[type[errors.LaminaError], Callable[[], errors.LaminaError]] = {
    errors.LocationUnavailable: errors.LocationUnavailable,
    errors.PathForbidden: errors.PathForbidden,
    errors.GuestNotFound: lambda: errors.GuestNotFound("lamina-i-0123"),
    errors.CommandFailed: lambda: errors.CommandFailed(["qemu-img", "info"], 1, "no such file"),
    errors.CommandTimeout: lambda: errors.CommandTimeout(["qemu-img", "info"], 5.0, "slow"),
    errors.AuthenticationFailed: lambda: errors.AuthenticationFailed(
        "auth_expired", "the request's date is too old"
    ),
    # Subclasses that only inherit their parent's code: they arrive as the parent. None of
    # them is caught by its own class around a remote call.
    VolumeNotFound: lambda: VolumeNotFound("vol-1"),
    SnapshotNotFound: lambda: SnapshotNotFound("snap-1"),
    NoImageFile: lambda: NoImageFile(httpx.URL("http://images.invalid/x.qcow2"), 404),
    XMLInvalid: lambda: XMLInvalid("appliance.xml", "not well-formed", 3, "disk"),
    MirrorsFailed: lambda: MirrorsFailed("ab" * 32, [("http://m.invalid/f", "timed out")]),
}


def _sample(cls: type[errors.LaminaError]) -> errors.LaminaError:
    if cls in SAMPLES:
        return SAMPLES[cls]()
    return cls("something went wrong", thing="x", count=3)


def test_each_code_is_declared_by_one_class() -> None:
    """The envelope carries a code: two classes declaring one code could not be told apart
    in the caller, whichever module declares them."""
    owners: dict[str, list[str]] = {}
    for cls in _all_error_classes():
        if "code" in vars(cls):
            owners.setdefault(cls.code, []).append(f"{cls.__module__}.{cls.__qualname__}")
    shared = {code: names for code, names in owners.items() if len(names) > 1}
    assert not shared, f"error codes declared by more than one class: {shared}"


def test_every_code_bearing_class_is_in_the_registry() -> None:
    """A class with a code of its own must be declared in lamina.errors, where the registry
    finds it, or it would arrive across the wire as its parent. The client's own
    ChecksumMismatch never crosses the wire."""
    outside = [
        f"{cls.__module__}.{cls.__qualname__} ({cls.code})"
        for cls in _all_error_classes()
        if "code" in vars(cls)
        and BY_CODE.get(cls.code) is not cls
        and not cls.__module__.startswith("lamina.client")
    ]
    assert not outside, f"declare these in lamina.errors: {outside}"


def test_the_registry_refuses_a_shared_code() -> None:
    class Twin(errors.NotFound):
        code = "guest_not_found"

    Twin.__module__ = errors.__name__  # as if declared there
    try:
        with pytest.raises(ValueError, match="'guest_not_found' is declared by both"):
            build_registry()
    finally:
        Twin.__module__ = __name__  # the registry looks past it again
    assert build_registry() == BY_CODE


def _client_for(exc: errors.LaminaError) -> TestClient:
    """The error handlers that the manager's API and the agent both install."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


def _round_trip(exc: errors.LaminaError) -> errors.LaminaError:
    response = _client_for(exc).get("/boom")
    assert isinstance(response, httpx.Response)
    with pytest.raises(errors.LaminaError) as caught:
        raise_for_error(response)
    return caught.value


def _wire_class(cls: type[errors.LaminaError]) -> type[errors.LaminaError]:
    """The class a caller gets: the nearest one (itself or a parent) that declares a code in
    lamina.errors; a subclass that only inherits its code arrives as that parent."""
    for klass in cls.__mro__:
        if "code" in vars(klass) and BY_CODE.get(vars(klass)["code"]) is klass:
            return klass
    raise AssertionError(cls)


@pytest.mark.parametrize(
    "cls",
    [c for c in _all_error_classes() if not c.__module__.startswith("lamina.client")],
    ids=lambda c: c.__qualname__,
)
def test_every_error_survives_a_round_trip(cls: type[errors.LaminaError]) -> None:
    sent = _sample_for(cls)
    got = _round_trip(sent)
    expected = errors.Forbidden if cls is errors.AuthenticationFailed else _wire_class(cls)
    assert type(got) is expected
    assert (got.code, got.status, got.message) == (sent.code, sent.status, sent.message)
    assert got.details == sent.details


def _sample_for(cls: type[errors.LaminaError]) -> errors.LaminaError:
    try:
        return _sample(cls)
    except TypeError as exc:
        pytest.fail(f"{cls.__qualname__} takes other arguments: add it to SAMPLES ({exc})")


def test_every_registered_class_arrives_as_itself() -> None:
    for code, cls in BY_CODE.items():
        got = _round_trip(_sample(cls))
        assert type(got) is cls, code
        assert got.code == code


def test_guest_not_found_is_caught_as_itself() -> None:
    got = _round_trip(errors.GuestNotFound("lamina-i-0123"))
    assert isinstance(got, errors.GuestNotFound)
    assert isinstance(got, errors.NotFound)
    assert got.details == {"guest": "lamina-i-0123"}
    assert got.message == "guest 'lamina-i-0123' does not exist on this host"


def test_command_failed_keeps_its_command() -> None:
    got = _round_trip(errors.CommandFailed(["qemu-img", "info"], 1, "no such file"))
    assert isinstance(got, errors.CommandFailed)
    assert (got.argv, got.returncode) == (["qemu-img", "info"], 1)
    assert "no such file" in got.message


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (403, {"code": "auth_expired", "message": "m"}, errors.Forbidden, "auth_expired"),
        (
            405,
            {"code": "method_not_allowed", "message": "m"},
            errors.LaminaError,
            "method_not_allowed",
        ),
        (404, {"code": "not_found", "message": "m"}, errors.NotFound, "not_found"),
        (404, {"code": "something_newer", "message": "m"}, errors.NotFound, "something_newer"),
        (503, "<html>bad gateway</html>", errors.BackendUnavailable, "backend_unavailable"),
        (500, ["not", "an", "envelope"], errors.LaminaError, "internal_error"),
    ],
)
def test_codes_no_class_declares_fall_back_to_the_status(
    status: int, body: Any, cls: type[errors.LaminaError], code: str
) -> None:
    response = (
        httpx.Response(status, text=body)
        if isinstance(body, str)
        else httpx.Response(status, json=body)
    )
    with pytest.raises(errors.LaminaError) as caught:
        raise_for_error(response)
    assert type(caught.value) is cls
    assert (caught.value.code, caught.value.status) == (code, status)


def test_details_are_kept_whatever_their_keys() -> None:
    details = {"message": "a detail named like the argument", "guest": "g"}
    response = httpx.Response(
        404, json={"code": "guest_not_found", "message": "gone", "details": details}
    )
    with pytest.raises(errors.GuestNotFound) as caught:
        raise_for_error(response)
    assert (caught.value.message, caught.value.details) == ("gone", details)
    assert str(caught.value) == "gone"


def test_success_raises_nothing() -> None:
    raise_for_error(httpx.Response(204))
