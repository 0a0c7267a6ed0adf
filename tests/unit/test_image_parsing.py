"""The pure parts of ``lamina image`` and the client's image calls: key=value metadata,
query strings, ``X-Image-Meta-*`` headers, streamed upload requests, the byte progress line."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner

from lamina.cli.image import image, listing_args, parse_pairs, parse_query
from lamina.cli.output import byte_line, human_bytes
from lamina.client import (
    CHUNK,
    _upload,
    image_filename,
    meta_from_headers,
    meta_headers,
)
from lamina.errors import InvalidRequest
from lamina.identity.signing import BODY_HEADER, UNSIGNED, LaminaAuth

# -- key=value metadata ----------------------------------------------------------------------


def test_pairs_become_metadata() -> None:
    assert parse_pairs(["name=Debian 12", "Format=qcow2", "note=a=b", "empty="]) == {
        "name": "Debian 12",
        "format": "qcow2",
        "note": "a=b",
        "empty": "",
    }


@pytest.mark.parametrize("pair", ["name", "=value", " =x"])
def test_a_pair_without_key_or_equals_is_refused(pair: str) -> None:
    with pytest.raises(click.BadParameter, match="is not key=value"):
        parse_pairs([pair])


# -- --query ---------------------------------------------------------------------------------


def test_query_strings() -> None:
    assert parse_query(None) == {} and parse_query("") == {}
    assert parse_query("architecture=x86_64&format=iso") == {
        "architecture": "x86_64",
        "format": "iso",
    }
    assert parse_query("?name=Debian%2012&os=") == {"name": "Debian 12", "os": ""}


@pytest.mark.parametrize("query", ["format", "format=iso&&", "a=1&a=2"])
def test_bad_query_strings(query: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_query(query)


def test_listing_parameters_leave_the_filters_and_options_win() -> None:
    filters, params = listing_args("format=iso&sort=name&dir=asc&limit=5", None, "desc")
    assert filters == {"format": "iso"}
    assert params == {"sort": "name", "dir": "desc", "limit": 5}
    assert listing_args(None, "size", None) == ({}, {"sort": "size"})
    with pytest.raises(click.BadParameter, match="limit"):
        listing_args("limit=many", None, None)


# -- X-Image-Meta-* headers ------------------------------------------------------------------


def test_metadata_to_headers() -> None:
    headers = meta_headers(
        {"name": "Debian 12", "os_version": 12, "kernel": None, "Format": "qcow2"}
    )
    assert headers == {
        "X-Image-Meta-Name": "Debian 12",
        "X-Image-Meta-Os-Version": "12",
        "X-Image-Meta-Format": "qcow2",
    }


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"name": "Débian"}, "printable ASCII"),
        ({"name": "a\r\nX-Evil: 1"}, "printable ASCII"),
        ({"na me": "x"}, "attribute name"),
        ({"": "x"}, "attribute name"),
    ],
)
def test_metadata_that_cannot_travel_in_a_header(meta: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        meta_headers(meta)


def test_headers_to_metadata() -> None:
    headers = httpx.Headers(
        {
            "x-image-meta-id": "7c0b",
            "X-Image-Meta-Name": "Debian 12",
            "x-image-meta-size": "1048576",
            "x-image-meta-access-count": "3",
            "x-image-meta-os-version": "12",
            "x-image-meta-created-at": "2025-01-31 12:00:00.5+00:00",
            "x-image-meta-updated-at": "not a time",
            "content-length": "0",
        }
    )
    assert meta_from_headers(headers) == {
        "id": "7c0b",
        "name": "Debian 12",
        "size": 1048576,
        "access_count": 3,
        "os_version": "12",
        "created_at": "2025-01-31T12:00:00.500000+00:00",
        "updated_at": "not a time",
    }
    assert meta_from_headers(meta_headers({"name": "x", "os_version": "1"})) == {
        "name": "x",
        "os_version": "1",
    }


def test_downloaded_file_names() -> None:
    assert image_filename({"id": "7c0b", "format": "qcow2"}) == "7c0b.qcow2"
    assert image_filename({"id": "7c0b", "format": None}) == "7c0b"


# -- streamed uploads ------------------------------------------------------------------------


def _signed(kwargs: dict[str, Any]) -> httpx.Request:
    request = httpx.Request("POST", "http://manager/images", **kwargs)
    flow = LaminaAuth("admin", "secret").auth_flow(request)
    return next(flow)


def test_an_upload_streams_unsigned_with_its_sha256_and_size_declared() -> None:
    data = bytes(range(256)) * (3 * CHUNK // 256 + 7)
    seen: list[tuple[int, int | None]] = []
    kwargs = _upload({"name": "disk"}, io.BytesIO(data), None, lambda d, t: seen.append((d, t)))
    request = _signed(kwargs)
    assert request.headers["X-Image-Meta-Sha256"] == hashlib.sha256(data).hexdigest()
    assert request.headers["Content-Length"] == str(len(data))
    assert request.headers["X-Image-Meta-Size"] == str(len(data))
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert "transfer-encoding" not in request.headers
    assert request.headers[BODY_HEADER] == UNSIGNED
    chunks = list(kwargs["content"])
    assert max(len(c) for c in chunks) == CHUNK and b"".join(chunks) == data
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))


def test_an_upload_from_a_path_reads_from_the_current_position(tmp_path: Any) -> None:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"x" * 1000)
    kwargs = _upload({"name": "disk", "sha256": "a" * 64}, path, None, None)
    assert kwargs["headers"]["X-Image-Meta-Sha256"] == "a" * 64  # declared: not recomputed
    assert b"".join(kwargs["content"]) == b"x" * 1000
    stream = io.BytesIO(b"headerBODY")
    stream.seek(6)
    kwargs = _upload({"name": "disk"}, stream, None, None)
    assert kwargs["headers"]["Content-Length"] == "4"
    assert kwargs["headers"]["X-Image-Meta-Sha256"] == hashlib.sha256(b"BODY").hexdigest()
    assert b"".join(kwargs["content"]) == b"BODY"


class _Pipe(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


def test_a_stream_that_cannot_seek_must_declare_its_sha256() -> None:
    with pytest.raises(InvalidRequest, match="cannot seek"):
        _upload({"name": "disk"}, _Pipe(b"data"), None, None)
    kwargs = _upload({"name": "disk", "sha256": "b" * 64}, _Pipe(b"data"), None, None)
    assert "Content-Length" not in kwargs["headers"]  # sent chunked
    assert b"".join(kwargs["content"]) == b"data"


def test_metadata_only_and_location_requests() -> None:
    assert _upload({"name": "x"}, None, None, None) == {"headers": {"X-Image-Meta-Name": "x"}}
    located = _upload({"name": "x"}, None, "http://example.org/d.iso", None)
    assert located["headers"]["X-Image-Meta-Location"] == "http://example.org/d.iso"
    with pytest.raises(InvalidRequest, match="not both"):
        _upload({"name": "x"}, io.BytesIO(b"1"), "http://example.org/d.iso", None)


# -- the progress line and the command line --------------------------------------------------


def test_byte_progress_line() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
    line = byte_line("get disk", 256 * 2**20, 1024 * 2**20, 2.0)
    assert line.startswith("get disk [#######.......................]  25% 256.0 MiB/1.0 GiB")
    assert line.endswith("128.0 MiB/s ETA 00:06")
    resumed = byte_line("get disk", 600, 1000, 1.0, since=500)
    assert "100 B/s" in resumed and "ETA 00:04" in resumed
    assert byte_line("add", 10, None, 0.0) == "add 10 B -/s"


def test_the_image_commands() -> None:
    runner = CliRunner()
    assert set(image.commands) == {
        "list",
        "show",
        "brief",
        "detail",
        "head",
        "get",
        "add",
        "update",
        "delete",
        "history",
    }
    # VISOR's verbs are aliases that say so.
    for old, new in (("brief", "list"), ("detail", "list"), ("head", "show")):
        assert image.commands[old].callback is image.commands[new].callback
        assert f"Alias of `lamina image {new}` (VISOR's name" in (image.commands[old].help or "")
    bad = runner.invoke(image, ["add", "name"])
    assert bad.exit_code == 2 and "is not key=value" in bad.output
    nothing = runner.invoke(image, ["delete"])
    assert nothing.exit_code == 2 and "give image ids or names, or --query" in nothing.output
    colour = runner.invoke(image, ["list", "--format", "qcow3"])
    assert colour.exit_code == 2 and "'qcow3' is not one of 'iso', 'raw', 'qcow2'" in colour.output


def test_the_cli_choices_are_the_api_values() -> None:
    from lamina.cli import image as cli_image
    from lamina.images import models, service

    assert cli_image.STATUSES == models.STATUSES
    assert cli_image.TYPES == models.TYPES
    assert cli_image.FORMATS == models.FORMATS
    assert cli_image.ARCHITECTURES == models.ARCHITECTURES
    assert cli_image.ACCESS == models.ACCESS
    assert cli_image.SORTABLE == service.SORTABLE
