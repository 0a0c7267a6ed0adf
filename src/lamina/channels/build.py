"""``lamina channel build``: the publisher's tool STORM lacked.

From a folder of appliance sources (one subfolder per appliance, with its ``appliance.xml``
in source form and the layer directories or prebuilt files it names) write a channel ready for
any static HTTP server::

    OUT/channel.rss          the feed (RSS 2.0)
    OUT/channel.rss.sig      its signature
    OUT/channel.pub          the channel's public key, for subscribers to pin
    OUT/files/<sha256>       every appliance XML, layer, image and boot file, by content
    OUT/files/<sha256>.sig   the signature of each

Layer directories become squashfs (or erofs) images built deterministically: the same tree
gives the same bytes, so the same digest, on every rebuild. A file already in ``OUT/files`` is
not written again, whichever appliance brings it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urljoin

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lamina.channels.feed import Feed, FileRef, Item, Role, write_feed
from lamina.channels.signing import public_key_text, sign_digest
from lamina.commands import run
from lamina.errors import Conflict, InvalidRequest
from lamina.formats.definition import Appliance, Blob
from lamina.formats.layerfs import check_layer
from lamina.formats.parsing import parse_appliance
from lamina.formats.variables import template_names
from lamina.formats.versions import Version
from lamina.formats.writing import write_appliance

log = logging.getLogger(__name__)

DEFINITION = "appliance.xml"
FEED = "channel.rss"
CHUNK = 1024 * 1024
LAYER_BUILD_TIMEOUT = 3600.0


def mksquashfs_argv(tree: Path, target: Path) -> list[str]:
    """A reproducible squashfs of ``tree``: every owner root, every time 0, no xattrs."""
    return [
        "mksquashfs", str(tree), str(target),
        "-noappend", "-reproducible", "-all-root", "-mkfs-time", "0", "-all-time", "0",
        "-no-xattrs", "-quiet", "-no-progress",
    ]  # fmt: skip


def mkfs_erofs_argv(tree: Path, target: Path) -> list[str]:
    """A reproducible erofs of ``tree``: every owner root, every time 0, a fixed UUID."""
    return [
        "mkfs.erofs", "--quiet", "-T0", "--all-root", "-x-1",
        "-U", "00000000-0000-0000-0000-000000000000", str(target), str(tree),
    ]  # fmt: skip


def _digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


class _Builder:
    def __init__(self, out: Path, key: Ed25519PrivateKey, base_urls: Sequence[str]) -> None:
        self.files = out / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.bases = [url if url.endswith("/") else url + "/" for url in base_urls]

    def _ref(self, role: Role, sha256: str, size: int, format: str | None = None) -> FileRef:
        urls = tuple(urljoin(base, f"files/{sha256}") for base in self.bases)
        return FileRef(
            role=role,
            sha256=sha256,
            size=size,
            signature=sign_digest(self.key, sha256, size),
            urls=urls or (f"files/{sha256}",),
            format=format,
        )

    def _place(self, path: Path, move: bool) -> tuple[str, int]:
        """Put the file at ``files/<sha256>`` with its signature; (sha256, size)."""
        sha256, size = _digest(path)
        target = self.files / sha256
        if target.exists():
            if move:
                path.unlink()
        else:
            partial = path if move else self.files / f".partial-{sha256}"
            if not move:
                shutil.copyfile(path, partial)
            partial.chmod(0o644)  # for the web server's user; mkstemp made it 0600
            os.replace(partial, target)
        sig = self.files / f"{sha256}.sig"
        sig.write_text(sign_digest(self.key, sha256, size) + "\n")
        return sha256, size

    def _source(self, folder: Path, blob: Blob) -> Path:
        path = (folder / (blob.source or "")).resolve()
        if not path.is_relative_to(folder.resolve()) or not path.exists():
            raise InvalidRequest(
                f"{folder.name}/{DEFINITION}: {blob.role} source {blob.source!r} is not a file "
                "or directory inside the appliance's folder"
            )
        return path

    def _blob(self, folder: Path, blob: Blob) -> tuple[Blob, FileRef]:
        """The published blob (digest and size, no source) and its feed entry."""
        path = self._source(folder, blob)
        if path.is_dir():
            if blob.role != "layer":
                raise InvalidRequest(
                    f"{folder.name}/{DEFINITION}: the {blob.role} source {blob.source!r} is a "
                    "directory; only layers are built from directories"
                )
            fd, name = tempfile.mkstemp(prefix=".partial-", dir=self.files)
            os.close(fd)
            image = Path(name)
            argv = (mkfs_erofs_argv if blob.format == "erofs" else mksquashfs_argv)(path, image)
            log.info("building the %s layer of %s from %s", blob.format, folder.name, path)
            try:
                run(argv, timeout=LAYER_BUILD_TIMEOUT)
            except BaseException:
                image.unlink(missing_ok=True)
                raise
            sha256, size = self._place(image, move=True)
        else:
            if blob.role == "layer":
                check_layer(path, blob.format, f"{folder.name}/{DEFINITION}: layer {blob.source}")
            sha256, size = self._place(path, move=False)
        published = dataclasses.replace(blob, sha256=sha256, size=size, source=None)
        return published, self._ref(blob.role, sha256, size, blob.format)

    def appliance(self, folder: Path) -> Item:
        definition = folder / DEFINITION
        if not definition.is_file():
            raise InvalidRequest(f"{folder}: an appliance folder needs its {DEFINITION}")
        source = parse_appliance(definition.read_bytes(), source=True, what=str(definition))
        _check_templates(folder, source, [self._source(folder, b) for b in source.layers])
        built = [self._blob(folder, b) for b in source.blobs()]
        blobs = iter(b for b, _ in built)  # in blobs() order: layers, image, kernel, initrd
        published = dataclasses.replace(
            source,
            layers=tuple(next(blobs) for _ in source.layers),
            image=None if source.image is None else next(blobs),
            kernel=None if source.kernel is None else next(blobs),
            initrd=None if source.initrd is None else next(blobs),
        )
        fd, name = tempfile.mkstemp(prefix=".partial-", dir=self.files)
        with os.fdopen(fd, "wb") as out:
            out.write(write_appliance(published))
        sha256, size = self._place(Path(name), move=True)
        return Item(
            name=published.name,
            version=published.version,
            kind=published.kind,
            label=published.label,
            description=published.description,
            definition=self._ref("definition", sha256, size),
            files=tuple(ref for _, ref in built),
        )


def _check_templates(folder: Path, appliance: Appliance, trees: list[Path]) -> None:
    """Each template must be a file of one of the appliance's layer directories (``trees``,
    resolved), and use only declared variables. (Not checkable inside prebuilt layer images:
    skipped then.)"""
    if not trees or not all(tree.is_dir() for tree in trees):
        return
    declared = {v.name for v in appliance.variables}
    where = f"{folder.name}/{DEFINITION}"
    for path in appliance.templates:
        candidates = [(t / path.lstrip("/")).resolve() for t in trees]
        found = [
            c for c, t in zip(candidates, trees, strict=True) if c.is_relative_to(t) and c.is_file()
        ]
        if not found:
            raise InvalidRequest(f"{where}: template {path} is in none of the layers")
        unknown = template_names(found[-1].read_text(errors="replace")) - declared
        if unknown:
            raise InvalidRequest(
                f"{where}: template {path} uses undeclared variable(s) {', '.join(sorted(unknown))}"
            )


def build_channel(
    source: Path,
    out: Path,
    key: Ed25519PrivateKey,
    base_urls: Sequence[str] = (),
    title: str | None = None,
) -> Feed:
    """Build the channel of every appliance folder in ``source`` into ``out`` (see the module
    doc), signed with ``key``. ``base_urls``: the mirrors that will serve ``out``, in order of
    preference; none: file URLs relative to the feed. Raise InvalidRequest (or XMLInvalid)
    naming the appliance folder for a bad definition or source, Conflict for two appliances
    with the same name and version, CommandFailed if a layer image cannot be built."""
    folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InvalidRequest(f"{source} holds no appliance folder")
    builder = _Builder(out, key, base_urls)
    items: dict[tuple[str, Version], Item] = {}
    for folder in folders:
        item = builder.appliance(folder)
        ident = (item.name, item.version)
        if ident in items:
            raise Conflict(f"{folder.name}: {item.name} {item.version} is defined twice")
        items[ident] = item
    name = title or source.resolve().name
    feed = Feed(
        title=name,
        link=builder.bases[0] if builder.bases else "./",
        description=f"Lamina appliance channel {name}",
        public_key=public_key_text(key.public_key()),
        items=tuple(sorted(items.values(), key=lambda i: (i.name, i.version))),
    )
    data = write_feed(feed)
    sha256 = hashlib.sha256(data).hexdigest()
    (out / f"{FEED}.sig").write_text(sign_digest(key, sha256, len(data)) + "\n")
    (out / FEED).write_bytes(data)
    (out / "channel.pub").write_text(feed.public_key + "\n")
    return feed
