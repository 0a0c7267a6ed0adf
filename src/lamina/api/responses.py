"""A JSON response built with ``json.dumps`` directly, for the busiest handlers: returning a
plain dict makes FastAPI walk it with ``jsonable_encoder`` first, several times the cost of
the encoding itself. Values must be JSON types or datetimes (written in ISO 8601, as
FastAPI writes them)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.responses import Response


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_response(data: Any, status_code: int = 200) -> Response:
    body = json.dumps(data, default=_iso, separators=(",", ":"), ensure_ascii=False)
    return Response(body.encode(), status_code=status_code, media_type="application/json")
