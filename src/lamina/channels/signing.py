"""Ed25519 signatures of a channel (``cryptography``).

A channel has one key pair. The publisher keeps the private key (PEM, PKCS#8, mode 0600); the
public key travels as one token, ``ed25519:<base64 of the 32 raw bytes>``, which a subscriber
pins when it adds the channel. What is signed is never a whole file but a statement of its
content address, ``lamina-channel-v1 sha256:<hex> size:<bytes>``: so a layer of any size is
verified by streaming it through SHA-256, and the same signature holds wherever the file is
mirrored. A signature is the 64-byte Ed25519 signature in base64, on one line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lamina.errors import Conflict, InvalidRequest, VerificationFailed

PREFIX = "ed25519:"
CONTEXT = "lamina-channel-v1"


def public_key_text(key: Ed25519PublicKey) -> str:
    """The token a subscriber pins: ``ed25519:<base64>``."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The key of a pinned token (or of a ``.pub`` file's text); InvalidRequest if it is not
    ``ed25519:`` and 32 bytes in base64."""
    token = text.strip()
    try:
        if not token.startswith(PREFIX):
            raise ValueError
        raw = base64.b64decode(token[len(PREFIX) :], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        raise InvalidRequest(
            f"{token[:60]!r} is not a channel public key: expected ed25519:<base64 of 32 bytes>"
        ) from None


def fingerprint(key: Ed25519PublicKey) -> str:
    """``sha256:<hex>`` of the raw public key, to compare keys by eye."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def generate_key(path: Path) -> Ed25519PublicKey:
    """Make a key pair: the private key in ``path`` (0600), the public token in
    ``path.pub``. Conflict if either exists (a channel key is never overwritten)."""
    public_path = path.with_name(path.name + ".pub")
    for existing in (path, public_path):
        if existing.exists():
            raise Conflict(f"{existing} already exists; a channel key is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path.write_text(public_key_text(key.public_key()) + "\n")
    return key.public_key()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The channel's private key; InvalidRequest naming ``path`` if it cannot be read or is
    not an unencrypted Ed25519 PEM key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"cannot read the channel key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidRequest(f"{path} is not an Ed25519 key")
    return key


def statement(sha256: str, size: int) -> bytes:
    """What is signed for a file: its content address."""
    return f"{CONTEXT} sha256:{sha256} size:{size}".encode()


def sign_digest(key: Ed25519PrivateKey, sha256: str, size: int) -> str:
    """The base64 signature of a file with this digest and size."""
    return base64.b64encode(key.sign(statement(sha256, size))).decode()


def verify_digest(key: Ed25519PublicKey, sha256: str, size: int, signature: str, what: str) -> None:
    """Raise VerificationFailed, naming ``what``, unless ``signature`` is the pinned key's
    signature of this digest and size."""
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
        key.verify(raw, statement(sha256, size))
    except (binascii.Error, ValueError, InvalidSignature):
        raise VerificationFailed(
            f"{what}: the signature is not the channel key's ({fingerprint(key)}) for "
            f"sha256 {sha256}, size {size}; refusing it (tampered, or signed by another key)",
            sha256=sha256,
        ) from None
