"""``/blobs/{sha256}``: where hosts fetch the files of the image repository, by digest, with
the capability the manager gave them (``lamina.compute.fetch``), not users' keys. ``GET`` and
``HEAD``; ``Range`` (206, one range); the digest as ``ETag``; streamed with constant memory
(``sendfile`` for a file store on plain HTTP)."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from lamina.api.zerocopy import EXTENSION as ZERO_COPY
from lamina.api.zerocopy import ZeroCopyFileResponse
from lamina.compute.fetch import Blob, bearer, serve_blob
from lamina.services import Services

blobs = APIRouter(prefix="/blobs", tags=["hosts"])
KIND = "application/octet-stream"


def _headers(blob: Blob) -> dict[str, str]:
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(blob.length),
        "ETag": f'"{blob.digest}"',
        "Cache-Control": "no-store",
    }
    if blob.partial:
        end = blob.offset + blob.length - 1
        headers["Content-Range"] = f"bytes {blob.offset}-{end}/{blob.size}"
    return headers


async def _blob(request: Request, digest: str) -> Blob:
    svc: Services = request.app.state.services
    capability = bearer(request.headers.get("authorization"))
    # The capability is checked first (in serve_blob), before anything is read.
    return await anyio.to_thread.run_sync(
        serve_blob, svc, capability, digest, request.headers.get("range")
    )


@blobs.head("/{digest}")
async def head_blob(digest: str, request: Request) -> Response:
    """The blob's size and digest, no body."""
    blob = await _blob(request, digest)
    return Response(status_code=206 if blob.partial else 200, headers=_headers(blob))


@blobs.get("/{digest}")
async def get_blob(digest: str, request: Request) -> Response:
    """The blob's bytes (a range of them with ``Range``)."""
    blob = await _blob(request, digest)
    status, headers = (206 if blob.partial else 200), _headers(blob)
    if ZERO_COPY in request.scope.get("extensions", {}):
        local = await anyio.to_thread.run_sync(blob.open_local)
        if local is not None:
            return ZeroCopyFileResponse(
                local, blob.offset, blob.length, status_code=status, headers=headers,
                media_type=KIND,
            )  # fmt: skip
    chunks = await anyio.to_thread.run_sync(blob.chunks)  # an S3 store asks at once
    return StreamingResponse(chunks, status_code=status, headers=headers, media_type=KIND)
