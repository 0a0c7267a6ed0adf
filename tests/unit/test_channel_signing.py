"""Channel keys and signatures, and verification of what a channel serves: the feed, an
appliance definition bound to its item, files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import stat
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lamina.channels.feed import Feed, FileRef, Item, write_feed
from lamina.channels.signing import (
    VerificationFailed,
    fingerprint,
    generate_key,
    load_private_key,
    parse_public_key,
    public_key_text,
    sign_digest,
    verify_digest,
)
from lamina.channels.verify import (
    fetch_verified,
    verify_definition,
    verify_feed,
    verify_file,
)
from lamina.errors import Conflict, InvalidRequest
from lamina.formats.parsing import parse_appliance
from lamina.formats.versions import Version
from lamina.formats.writing import write_appliance

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
OTHER = Ed25519PrivateKey.generate()
LAYER = b"squashfs bytes " * 1000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signed_ref(role: str, data: bytes, key: Ed25519PrivateKey = KEY) -> FileRef:
    return FileRef(
        role=role,  # type: ignore[arg-type]
        sha256=sha(data),
        size=len(data),
        signature=sign_digest(key, sha(data), len(data)),
        urls=(f"http://mirror.example/files/{sha(data)}",),
        format="squashfs" if role == "layer" else None,
    )


# -- keys ------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_and_the_token_to_pin(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "channel.key"
    public = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = (tmp_path / "keys" / "channel.key.pub").read_text().strip()
    assert token == public_key_text(public) and token.startswith("ed25519:")
    assert public_key_text(parse_public_key(token)) == token
    assert public_key_text(load_private_key(path).public_key()) == token
    assert fingerprint(public).startswith("sha256:") and len(fingerprint(public)) == 71


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "channel.key"
    generate_key(path)
    before = path.read_bytes()
    with pytest.raises(Conflict, match="never overwritten"):
        generate_key(path)
    assert path.read_bytes() == before
    (tmp_path / "other.key.pub").write_text("x")
    with pytest.raises(Conflict, match="other.key.pub already exists"):
        generate_key(tmp_path / "other.key")
    assert not (tmp_path / "other.key").exists()


def test_a_key_file_that_is_not_an_ed25519_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read the channel key"):
        load_private_key(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(InvalidRequest, match="cannot read the channel key"):
        load_private_key(tmp_path / "junk.key")
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "ec.key").write_bytes(ec_key)
    with pytest.raises(InvalidRequest, match="is not an Ed25519 key"):
        load_private_key(tmp_path / "ec.key")


@pytest.mark.parametrize(
    "token", ["", "ed25519:", "rsa:AAAA", "ed25519:not base64!", "ed25519:" + "QUFB" * 4]
)
def test_a_bad_public_key_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidRequest, match="is not a channel public key"):
        parse_public_key(token)


# -- signatures ------------------------------------------------------------------------------


def test_a_signature_holds_for_its_digest_and_size_only() -> None:
    digest = sha(LAYER)
    signature = sign_digest(KEY, digest, len(LAYER))
    verify_digest(PUBLIC, digest, len(LAYER), signature, "layer")
    for args in [
        (sha(b"other"), len(LAYER), signature),
        (digest, len(LAYER) + 1, signature),
        (digest, len(LAYER), sign_digest(OTHER, digest, len(LAYER))),
        (digest, len(LAYER), "not base64!"),
        (digest, len(LAYER), ""),
    ]:
        with pytest.raises(VerificationFailed) as info:
            verify_digest(PUBLIC, *args, what="layer")
        assert info.value.status == 502 and info.value.code == "verification_failed"
        assert info.value.message.startswith("layer: the signature is not the channel key's")
        assert fingerprint(PUBLIC) in info.value.message


# -- the feed --------------------------------------------------------------------------------


def _feed_bytes() -> bytes:
    feed = Feed("t", "./", "d", public_key_text(PUBLIC), ())
    return write_feed(feed)


def test_a_signed_feed_is_verified_then_parsed() -> None:
    data = _feed_bytes()
    signature = sign_digest(KEY, sha(data), len(data))
    assert verify_feed(PUBLIC, data, signature, "http://c.example/channel.rss").title == "t"


def test_a_tampered_feed_is_refused_before_it_is_parsed() -> None:
    data = _feed_bytes()
    signature = sign_digest(KEY, sha(data), len(data))
    tampered = data.replace(b"<title>t</title>", b"<title>T</title>")
    with pytest.raises(VerificationFailed, match="channel feed http://c.example/channel.rss"):
        verify_feed(PUBLIC, tampered, signature, "http://c.example/channel.rss")
    hostile = b'<!DOCTYPE x [<!ENTITY a "a">]><rss/>'
    with pytest.raises(VerificationFailed):  # not even parsed: no XML error
        verify_feed(PUBLIC, hostile, signature, "http://c.example/channel.rss")
    other = sign_digest(OTHER, sha(data), len(data))
    with pytest.raises(VerificationFailed):
        verify_feed(PUBLIC, data, other, "http://c.example/channel.rss")


# -- definitions and files -------------------------------------------------------------------


def _published() -> tuple[bytes, Item]:
    source = (
        b'<appliance version="1.0" name="web" kind="application"><label>Web</label>'
        b'<version>1.0</version><substrate name="debian"/>'
        b'<layers><layer format="squashfs" source="layer"/></layers></appliance>'
    )
    appliance = parse_appliance(source, source=True)
    layer = dataclasses.replace(
        appliance.layers[0], sha256=sha(LAYER), size=len(LAYER), source=None
    )
    definition = write_appliance(dataclasses.replace(appliance, layers=(layer,)))
    item = Item(
        name="web",
        version=appliance.version,
        kind="application",
        label="Web",
        description="",
        definition=signed_ref("definition", definition),
        files=(signed_ref("layer", LAYER),),
    )
    return definition, item


def test_a_definition_is_verified_and_bound_to_its_item() -> None:
    definition, item = _published()
    appliance = verify_definition(PUBLIC, item, definition)
    assert appliance.name == "web"
    pairs = list(zip(appliance.blobs(), item.files, strict=True))
    assert [(b.sha256, f.sha256) for b, f in pairs] == [(sha(LAYER), sha(LAYER))]


def test_a_tampered_definition_is_refused() -> None:
    definition, item = _published()
    tampered = definition.replace(b"<label>Web</label>", b"<label>Wob</label>")
    with pytest.raises(VerificationFailed, match="tampered or corrupted") as info:
        verify_definition(PUBLIC, item, tampered)
    assert f"not the signed {item.definition.sha256}" in info.value.message
    resigned = dataclasses.replace(item, definition=signed_ref("definition", tampered, OTHER))
    with pytest.raises(VerificationFailed, match="signature is not the channel key's"):
        verify_definition(PUBLIC, resigned, tampered)


def test_an_item_must_announce_the_appliance_its_definition_is() -> None:
    definition, item = _published()
    with pytest.raises(VerificationFailed, match="announces web 2.0"):
        verify_definition(
            PUBLIC, dataclasses.replace(item, version=Version.parse("2.0")), definition
        )
    swapped = dataclasses.replace(item, files=(signed_ref("layer", b"another signed layer"),))
    with pytest.raises(VerificationFailed, match="not the ones its definition lists"):
        verify_definition(PUBLIC, swapped, definition)


def test_a_file_is_verified_by_signature_then_digest() -> None:
    ref = signed_ref("layer", LAYER)
    verify_file(PUBLIC, ref, io.BytesIO(LAYER))
    with pytest.raises(VerificationFailed, match="tampered or corrupted"):
        verify_file(PUBLIC, ref, io.BytesIO(LAYER[:-1] + b"X"))
    with pytest.raises(VerificationFailed, match="signature"):
        verify_file(PUBLIC, signed_ref("layer", LAYER, OTHER), io.BytesIO(LAYER))


def test_a_wrongly_signed_file_is_never_downloaded() -> None:
    requests: list[httpx.Request] = []

    def mirror(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=LAYER)

    client = httpx.Client(transport=httpx.MockTransport(mirror))
    with pytest.raises(VerificationFailed):
        fetch_verified(PUBLIC, signed_ref("layer", LAYER, OTHER), io.BytesIO(), client=client)
    assert requests == []
