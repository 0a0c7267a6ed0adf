"""Image metadata as users send it: ``X-Image-Meta-<attribute>`` headers or JSON, validated
with precise messages (VISOR table 4.1)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lamina.errors import InvalidRequest, excerpt
from lamina.images.models import ACCESS, ARCHITECTURES, FORMATS, TYPES

HEADER_PREFIX = "x-image-meta-"
#: Attributes users set.
USER_FIELDS = ("name", "architecture", "access", "type", "format", "store", "kernel", "ramdisk")
#: Attributes Lamina manages; users may not set them.
SERVICE_FIELDS = (
    "id",
    "uri",
    "status",
    "size",
    "location",
    "owner",
    "checksum",
    "sha256",
    "created_at",
    "uploaded_at",
    "updated_at",
    "accessed_at",
    "access_count",
    "error",
)
#: Declared by a client for an upload, checked against what arrives (not stored as such).
DECLARED = ("checksum", "sha256", "size")
OTHER_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_OTHERS = 64
CHOICES = {"architecture": ARCHITECTURES, "access": ACCESS, "type": TYPES, "format": FORMATS}


def from_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``X-Image-Meta-*`` headers as attributes (names lower-cased; ``-`` and ``_`` alike)."""
    meta = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(HEADER_PREFIX):
            key = lower[len(HEADER_PREFIX) :].replace("-", "_")
            meta["id" if key == "_id" else key] = value.strip()
    return meta


def split(
    meta: Mapping[str, Any], *, allow_location: bool = True
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Sort metadata into (user attributes, others, declared upload facts); refuse service
    attributes with a 400 naming them."""
    fields: dict[str, Any] = {}
    others: dict[str, str] = {}
    declared: dict[str, str] = {}
    for key, value in meta.items():
        if key in USER_FIELDS:
            fields[key] = _check(key, value)
        elif key == "location" and allow_location:
            fields["location"] = str(value)
        elif key in DECLARED:
            declared[key] = str(value).lower()
        elif key in SERVICE_FIELDS:
            raise InvalidRequest(f"{key!r} is managed by Lamina and cannot be set")
        else:
            if not OTHER_KEY.match(key):
                raise InvalidRequest(
                    f"attribute name {excerpt(key)!r} must be 1-64 lower-case letters, digits "
                    "or _.- starting with a letter"
                )
            if value is not None and len(str(value)) > 1024:
                raise InvalidRequest(f"attribute {key!r} is longer than 1024 characters")
            others[key] = str(value)
    if len(others) > MAX_OTHERS:
        raise InvalidRequest(f"at most {MAX_OTHERS} extra attributes")
    _check_declared(declared)
    return fields, others, declared


def _check(key: str, value: Any) -> Any:
    if value is None:
        return None
    text = str(value)
    if key == "name":
        if not text or len(text) > 255:
            raise InvalidRequest("name must be 1-255 characters")
        return text
    if key in CHOICES and text not in CHOICES[key]:
        raise InvalidRequest(f"{key} {excerpt(text)!r} is not one of {', '.join(CHOICES[key])}")
    if key in ("kernel", "ramdisk") and not 1 <= len(text) <= 255:
        raise InvalidRequest(f"{key} must be the id or name of a registered image")
    return text


def _check_declared(declared: dict[str, str]) -> None:
    if "checksum" in declared and not re.match(r"^[0-9a-f]{32}$", declared["checksum"]):
        raise InvalidRequest("checksum must be an MD5 in hex (32 characters)")
    if "sha256" in declared and not re.match(r"^[0-9a-f]{64}$", declared["sha256"]):
        raise InvalidRequest("sha256 must be a SHA-256 in hex (64 characters)")
    if "size" in declared and not declared["size"].isdigit():
        raise InvalidRequest("size must be a number of bytes")
