"""``/images``: VISOR's image API (table 4.2), a thin layer over ``lamina.images.usecases``:
headers in, headers and streams out. The handlers that stream a body or only read a row stay
``async`` (docs/architecture.md, "What runs where").

Every ``{image_id}`` is the image's id or its name (``lamina.images.service.get_image``: an
id as VISOR answers it; a name means the caller's own image of that name, else the only one
they may see, else ``400 ambiguous_name`` listing the candidates)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.auth import principal, streamed_upload
from lamina.api.deps import caller, services
from lamina.api.responses import json_response
from lamina.api.zerocopy import EXTENSION as ZERO_COPY
from lamina.api.zerocopy import ZeroCopyFileResponse
from lamina.errors import InvalidRequest
from lamina.identity.principal import Principal
from lamina.identity.signing import BODY_HEADER, UNSIGNED
from lamina.images import meta, usecases
from lamina.services import Services

images = APIRouter(prefix="/images", tags=["images"])
RESERVED_QUERY = ("sort", "dir", "limit", "marker")


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _meta_headers(data: dict[str, Any]) -> dict[str, str]:
    """Metadata as VISOR's headers; times in ISO 8601, as in the JSON answers."""
    return {
        f"X-Image-Meta-{key}": value.isoformat() if isinstance(value, datetime) else str(value)
        for key, value in data.items()
        if value is not None
    }


def _upload(request: Request) -> usecases.Upload | None:
    """The request's body as an image's file, if it has one."""
    length = request.headers.get("content-length")
    if not (request.headers.get("transfer-encoding") or (length and length != "0")):
        return None
    return usecases.Upload(
        blocks=request.stream().__aiter__(),
        length=length,
        signed=request.headers.get(BODY_HEADER.lower()) != UNSIGNED,
    )


def _filters(request: Request) -> dict[str, str]:
    """Every query parameter but the listing's own is a filter on an attribute."""
    return {k: v for k, v in request.query_params.items() if k not in RESERVED_QUERY}


@images.post("", status_code=201)
@streamed_upload
async def add_image(request: Request) -> Any:
    """Register an image from ``X-Image-Meta-*`` headers, with its file in the body, or a
    ``location`` (an http store), or neither (``locked``)."""
    svc, who = caller(request)
    fields, others, declared = meta.split(meta.from_headers(request.headers))
    described = await usecases.add_image(
        svc, who, fields, others, declared, upload=_upload(request), base=_base(request)
    )
    return json_response({"image": described}, status_code=201)


@images.put("/{image_id}")
@streamed_upload
async def update_image(image_id: str, request: Request) -> Any:
    """Change metadata and/or give a ``locked`` or ``error`` image its file."""
    svc, who = caller(request)
    fields, others, declared = meta.split(meta.from_headers(request.headers))
    described = await usecases.update_image(
        svc, who, image_id, fields, others, declared, upload=_upload(request),
        base=_base(request),
    )  # fmt: skip
    return json_response({"image": described})


@images.get("")
async def list_brief(
    request: Request,
    sort: str = "created_at",
    dir: str = "asc",
    limit: int = Query(1000, ge=1, le=10000),
    marker: str | None = None,
) -> Any:
    """Brief metadata of the images the caller may see; filter by any attribute. The
    database builds the document (the repository's hottest read)."""
    svc, who = caller(request)
    body = usecases.list_brief(
        svc, who, filters=_filters(request), sort=sort, direction=dir, limit=limit, marker=marker
    )
    return Response(body, media_type="application/json")


@images.get("/detail")
def list_detail(
    request: Request,
    sort: str = "created_at",
    dir: str = "asc",
    limit: int = Query(1000, ge=1, le=10000),
    marker: str | None = None,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Full metadata of the images the caller may see; the same filters as the brief list."""
    found = usecases.list_detail(
        svc, who, filters=_filters(request), sort=sort, direction=dir, limit=limit,
        marker=marker, base=_base(request),
    )  # fmt: skip
    return {"images": found}


@images.get("/stats")
def image_statistics(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    """Counts per store, format, architecture and status; most used; never used."""
    return {"stats": usecases.statistics(svc, who)}


@images.head("/{image_id}")
async def head_image(image_id: str, request: Request) -> Response:
    """The image's metadata as ``X-Image-Meta-*`` headers, no body."""
    svc, who = caller(request)
    return Response(headers=_meta_headers(usecases.show_image(svc, who, image_id, _base(request))))


@images.get("/{image_id}/history")
def image_history(
    image_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """Who did what to the image, oldest first."""
    return {"history": usecases.image_history(svc, who, image_id)}


@images.get("/{image_id}")
def get_image(
    image_id: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Response:
    """The file, streamed, with the metadata in headers; honours ``Range``."""
    file = usecases.download(svc, who, image_id, request.headers.get("range"), _base(request))
    described = file.image
    headers = {
        **_meta_headers(described),
        "Accept-Ranges": "bytes",
        "Content-Length": str(file.length),
    }
    if described.get("sha256"):
        headers["ETag"] = f'"{described["sha256"]}"'
    status = 200
    if file.partial:
        status = 206
        end = file.offset + file.length - 1
        headers["Content-Range"] = f"bytes {file.offset}-{end}/{described['size']}"
    kind = "application/octet-stream"
    if ZERO_COPY in request.scope.get("extensions", {}):
        local = file.open_local()
        if local is not None:
            return ZeroCopyFileResponse(
                local, file.offset, file.length, status_code=status, headers=headers,
                media_type=kind,
            )  # fmt: skip
    return StreamingResponse(file.chunks(), status_code=status, headers=headers, media_type=kind)


@images.delete("/{image_id}")
def delete_image(
    image_id: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Remove the metadata and the file; answers the removed metadata (to re-post it)."""
    return {"image": usecases.delete_image(svc, who, image_id, _base(request))}


# -- resumable uploads ---------------------------------------------------------------------


class UploadStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=0, le=2**63 - 1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


@images.post("/{image_id}/upload", status_code=201)
def start_resumable(
    image_id: str,
    body: UploadStart,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Begin a resumable upload of a ``locked`` or ``error`` image: declare its size and
    SHA-256, then send parts with PATCH."""
    return {"upload": usecases.start_resumable(svc, who, image_id, body.size, body.sha256)}


@images.get("/{image_id}/upload")
def resumable_state(
    image_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """How much of a resumable upload the server has: continue from ``offset``."""
    return {"upload": usecases.resumable_state(svc, who, image_id)}


@images.patch("/{image_id}/upload")
@streamed_upload
async def upload_part(
    image_id: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Append the body at ``Upload-Offset``; the last part makes the image available (or
    error, if the whole does not match the declared size and SHA-256)."""
    try:
        offset = int(request.headers["upload-offset"])
    except (KeyError, ValueError):
        raise InvalidRequest("a part needs an Upload-Offset header (bytes already sent)") from None
    state, image = await usecases.upload_part(
        svc, who, image_id, offset, request.stream().__aiter__(), _base(request)
    )
    if image is None:
        return {"upload": state}
    return {"upload": state, "image": image}


@images.delete("/{image_id}/upload")
def cancel_resumable(
    image_id: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """Give up a resumable upload: the staged bytes go, the image turns to ``error``."""
    usecases.cancel_resumable(svc, who, image_id)
    return {"upload": None}
