"""Checking what comes from a channel against the key the subscriber pinned: the signature
first (before anything is fetched or parsed), then the SHA-256 and size of the bytes.

The order of use: ``verify_feed`` on the fetched feed and its ``.sig``; for an item,
``fetch_verified`` (or ``verify_file`` on a copy already held) of its definition, then
``verify_definition``, which also binds the item's files to the appliance's layers; then
``fetch_verified`` of each file. Anything that fails raises ``VerificationFailed`` (502) and
must not be used.
"""

from __future__ import annotations

import hashlib
from typing import IO

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lamina.channels.feed import Feed, FileRef, Item, parse_feed
from lamina.channels.mirrors import CHUNK, Fetched, Progress, Sink, fetch
from lamina.channels.signing import verify_digest
from lamina.errors import VerificationFailed
from lamina.formats.definition import Appliance
from lamina.formats.parsing import parse_appliance


def verify_feed(key: Ed25519PublicKey, data: bytes, signature: str, url: str) -> Feed:
    """The feed fetched from ``url``, once ``signature`` (the text of ``<feed>.sig``) proves
    the pinned key signed these bytes; only then is it parsed."""
    digest = hashlib.sha256(data).hexdigest()
    verify_digest(key, digest, len(data), signature, f"channel feed {url}")
    return parse_feed(data, url)


def check_signature(key: Ed25519PublicKey, ref: FileRef) -> None:
    """Raise VerificationFailed unless the pinned key signed this file's digest and size."""
    verify_digest(key, ref.sha256, ref.size, ref.signature, f"{ref.role} {ref.sha256}")


def _check_digest(ref: FileRef, sha256: str, size: int) -> None:
    if (sha256, size) != (ref.sha256, ref.size):
        raise VerificationFailed(
            f"{ref.role} {ref.sha256}: the bytes have sha256 {sha256} and size {size}, not "
            f"the signed {ref.sha256} and {ref.size}; refusing them (tampered or corrupted)",
            sha256=ref.sha256,
        )


def verify_file(key: Ed25519PublicKey, ref: FileRef, stream: IO[bytes]) -> None:
    """Check a file already held (read from ``stream``'s position to its end, 1 MiB at a
    time): signature, then SHA-256 and size."""
    check_signature(key, ref)
    digest = hashlib.sha256()
    size = 0
    while block := stream.read(CHUNK):
        digest.update(block)
        size += len(block)
    _check_digest(ref, digest.hexdigest(), size)


def fetch_verified(
    key: Ed25519PublicKey,
    ref: FileRef,
    sink: Sink,
    *,
    start: int = 0,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
) -> Fetched:
    """Check the file's signature, then fetch it from its mirrors into ``sink`` (see
    ``mirrors.fetch``: a mirror serving other bytes is skipped, ``start`` resumes). Raise
    VerificationFailed before any download if the signature is wrong, MirrorsFailed if no
    mirror served the signed bytes."""
    check_signature(key, ref)
    return fetch(
        ref.urls, ref.sha256, ref.size, sink, start=start, client=client, progress=progress
    )


def verify_definition(key: Ed25519PublicKey, item: Item, data: bytes) -> Appliance:
    """The appliance of ``item``, from its definition's bytes: signature, digest, parse
    (XMLInvalid, 400), then that it is the appliance the item announces and that the item's
    files are exactly its layers, image and boot files in order, so
    ``zip(appliance.blobs(), item.files)`` pairs each with where to fetch it."""
    check_signature(key, item.definition)
    _check_digest(item.definition, hashlib.sha256(data).hexdigest(), len(data))
    appliance = parse_appliance(data)
    announced = (item.name, item.version, item.kind)
    if (appliance.name, appliance.version, appliance.kind) != announced:
        raise VerificationFailed(
            f"the channel announces {item.name} {item.version} ({item.kind}) but its "
            f"definition is {appliance.name} {appliance.version} ({appliance.kind})"
        )
    blobs = [(b.role, b.sha256, b.size) for b in appliance.blobs()]
    if blobs != [(f.role, f.sha256, f.size) for f in item.files]:
        raise VerificationFailed(
            f"the channel's files for {item.name} {item.version} are not the ones its "
            "definition lists"
        )
    return appliance
