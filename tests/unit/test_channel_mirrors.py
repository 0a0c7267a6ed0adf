"""Fetching from mirrors, against httpx's MockTransport: failover, wrong content, resume.

Each mirror's host says how it behaves: ``good`` (honours Range), ``norange`` (ignores it),
``down`` (refuses connections), ``corrupt`` (one byte changed), ``missing`` (404), ``long``
(a byte too many, no length), ``dies`` (stops half-way), ``badrange`` (a wrong
Content-Range)."""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator

import httpx
import pytest

from lamina.channels.mirrors import CHUNK, Fetched, MirrorsFailed, fetch

DATA = random.Random(5).randbytes(2 * CHUNK + 777)
SHA = hashlib.sha256(DATA).hexdigest()


class _Body(httpx.SyncByteStream):
    """A streamed body, as a real server's (httpx reads ``content=`` bodies at once)."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts

    def __iter__(self) -> Iterator[bytes]:
        yield from self.parts


class _Dies(_Body):
    def __iter__(self) -> Iterator[bytes]:
        yield self.parts[0][: len(self.parts[0]) // 2]
        raise httpx.ReadError("connection reset by peer")


class Mirrors:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host = request.url.host
        if host == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if host == "missing":
            return httpx.Response(404)
        body = DATA
        if host == "corrupt":
            body = DATA[:100] + bytes([DATA[100] ^ 1]) + DATA[101:]
        if host == "long":
            return httpx.Response(200, stream=_Body(DATA, b"x"))
        start = 0
        range_header = request.headers.get("range", "")
        if range_header and host not in ("norange",):
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            first = start + 1 if host == "badrange" else start
            headers = {"content-range": f"bytes {first}-{len(DATA) - 1}/{len(DATA)}"}
            if host == "dies":
                return httpx.Response(206, headers=headers, stream=_Dies(body[start:]))
            return httpx.Response(206, headers=headers, stream=_Body(body[start:]))
        if host == "dies":
            return httpx.Response(200, stream=_Dies(body))
        return httpx.Response(200, stream=_Body(body))

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    def ranges(self) -> list[str | None]:
        return [r.headers.get("range") for r in self.requests]


def run(
    urls: list[str], sink: io.BytesIO | None = None, start: int = 0
) -> tuple[Fetched, bytes, Mirrors]:
    mirrors = Mirrors()
    out = sink or io.BytesIO()
    result = fetch(urls, SHA, len(DATA), out, start=start, client=mirrors.client())
    return result, out.getvalue(), mirrors


def urls(*hosts: str) -> list[str]:
    return [f"http://{host}/files/{SHA}" for host in hosts]


@pytest.mark.parametrize("first", ["down", "missing", "corrupt", "long"])
def test_a_failing_mirror_is_skipped_for_the_next(first: str) -> None:
    sink = io.BytesIO(b"stale bytes from before")
    result, data, _ = run(urls(first, "good"), sink, start=0)
    assert result.url == f"http://good/files/{SHA}"
    assert data == DATA
    assert result.downloaded >= len(DATA)  # with what the bad mirror sent


def test_a_wrong_content_range_skips_the_mirror() -> None:
    held = 1000
    result, data, mirrors = run(urls("badrange", "good"), io.BytesIO(DATA[:held]), start=held)
    assert result == Fetched(f"http://good/files/{SHA}", len(DATA) - held) and data == DATA
    assert mirrors.ranges() == [f"bytes={held}-", f"bytes={held}-"]


def test_when_no_mirror_serves_the_file_each_reason_is_given() -> None:
    with pytest.raises(MirrorsFailed) as info:
        run(urls("down", "corrupt", "missing"))
    error = info.value
    assert error.status == 503 and error.code == "backend_unavailable"
    reasons = dict(error.failures)
    assert "ConnectError: connection refused" in reasons[f"http://down/files/{SHA}"]
    assert reasons[f"http://corrupt/files/{SHA}"].startswith("wrong content: sha256 is ")
    assert reasons[f"http://missing/files/{SHA}"] == "HTTP 404"
    assert [f["url"] for f in error.details["failures"]] == urls("down", "corrupt", "missing")


def test_a_download_resumes_with_a_range_request() -> None:
    held = CHUNK + 5
    result, data, mirrors = run(urls("good"), io.BytesIO(DATA[:held]), start=held)
    assert data == DATA and result.downloaded == len(DATA) - held
    assert mirrors.ranges() == [f"bytes={held}-"]


def test_a_mirror_that_ignores_range_sends_everything_again() -> None:
    held = 1000
    result, data, mirrors = run(urls("norange"), io.BytesIO(DATA[:held]), start=held)
    assert data == DATA and result.downloaded == len(DATA)


def test_bytes_past_start_are_dropped() -> None:
    _, data, _ = run(urls("good"), io.BytesIO(DATA[:500] + b"garbage"), start=500)
    assert data == DATA


def test_a_mirror_that_dies_is_continued_by_the_next() -> None:
    result, data, mirrors = run(urls("dies", "good"))
    assert data == DATA and result.url == f"http://good/files/{SHA}"
    first, second = mirrors.ranges()
    assert first is None and second is not None
    assert 0 < int(second.removeprefix("bytes=").rstrip("-")) <= len(DATA) // 2
    assert result.downloaded == len(DATA)


def test_a_wrong_prefix_is_fetched_again_from_the_start() -> None:
    held = 4096
    wrong = io.BytesIO(bytes(held))
    result, data, mirrors = run(urls("good"), wrong, start=held)
    assert data == DATA and result.url == f"http://good/files/{SHA}"
    assert mirrors.ranges() == [f"bytes={held}-", None]


def test_a_complete_sink_needs_no_request() -> None:
    result, data, mirrors = run(urls("down"), io.BytesIO(DATA), start=len(DATA))
    assert result == Fetched(None, 0) and data == DATA
    assert mirrors.requests == []


def test_a_full_but_wrong_sink_is_fetched_again() -> None:
    result, data, mirrors = run(urls("good"), io.BytesIO(bytes(len(DATA))), start=len(DATA))
    assert data == DATA and result.downloaded == len(DATA)


def test_progress_is_reported_up_to_the_size() -> None:
    seen: list[tuple[int, int]] = []
    client = Mirrors().client()
    fetch(
        urls("good"),
        SHA,
        len(DATA),
        io.BytesIO(),
        client=client,
        progress=lambda *p: seen.append(p),
    )
    assert seen[-1] == (len(DATA), len(DATA))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
