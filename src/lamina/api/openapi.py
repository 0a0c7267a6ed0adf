"""The OpenAPI document, told the truth about errors: Lamina answers bad input with 400 and
its own envelope, not FastAPI's 422, and any operation may answer with that envelope."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "description": "Stable error code, e.g. not_found"},
        "message": {"type": "string", "description": "What went wrong, for people"},
        "details": {"type": "object", "additionalProperties": True},
    },
}
ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    if responses.pop("422", None) is not None:
                        responses["400"] = {"description": "Invalid request", "content": ERROR_REF}
                    responses.setdefault("default", {"description": "Error", "content": ERROR_REF})
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            components["Error"] = ERROR
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
