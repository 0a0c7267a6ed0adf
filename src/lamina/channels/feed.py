"""A channel's RSS 2.0 feed: one ``<item>`` per appliance version, pointing at its appliance
XML and at each of its files, each on one or more mirror URLs with its SHA-256, size and
signature (Lamina's elements are in the ``urn:lamina:channel:1`` namespace; RSS readers
ignore them and see the appliance XML as the item's enclosure). The format is in
``docs/appliances.md``."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urljoin, urlsplit

from lamina.errors import InvalidRequest, NotFound
from lamina.formats.definition import KINDS, Kind
from lamina.formats.versions import Version
from lamina.formats.xmlsafe import Document, read_xml

NS = "urn:lamina:channel:1"
MAX_BYTES = 16 * 1024 * 1024
WHAT = "channel feed"
Role = Literal["definition", "layer", "image", "kernel", "initrd"]
ROLES: tuple[Role, ...] = ("definition", "layer", "image", "kernel", "initrd")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def _q(tag: str) -> str:
    """A Lamina element's name as the parser sees it."""
    return f"{{{NS}}}{tag}"


def _w(tag: str) -> str:
    """A Lamina element's name as written: prefixed by hand, with ``xmlns:lamina`` set on the
    root, because ``ET.register_namespace`` is global and the libvirt domain XML maps
    ``lamina`` to its own namespace."""
    return f"lamina:{tag}"


@dataclass(frozen=True)
class FileRef:
    """One file of an item: where to fetch it (mirrors, in order) and what it must be."""

    role: Role
    sha256: str
    size: int
    signature: str
    urls: tuple[str, ...]
    format: str | None = None


@dataclass(frozen=True)
class Item:
    """One version of one appliance on the channel."""

    name: str
    version: Version
    kind: Kind
    label: str
    description: str
    definition: FileRef
    files: tuple[FileRef, ...]


@dataclass(frozen=True)
class Feed:
    title: str
    link: str
    description: str
    public_key: str
    items: tuple[Item, ...]

    def find(self, name: str, version: str | None = None) -> Item:
        """The item of appliance ``name`` at ``version`` (None: its newest); NotFound."""
        matches = [i for i in self.items if i.name == name]
        if version is not None:
            wanted = Version.parse(version)
            matches = [i for i in matches if i.version == wanted]
        if not matches:
            at = f" {version}" if version else ""
            raise NotFound(f"the channel has no appliance {name}{at}", appliance=name)
        return max(matches, key=lambda i: i.version)


# -- writing ---------------------------------------------------------------------------------


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def _file(parent: ET.Element, ref: FileRef) -> None:
    attrs = {"role": ref.role, "sha256": ref.sha256, "size": str(ref.size)}
    if ref.format is not None:
        attrs["format"] = ref.format
    attrs["signature"] = ref.signature
    element = ET.SubElement(parent, _w("file"), attrs)
    for url in ref.urls:
        _text(element, _w("url"), url)


def write_feed(feed: Feed) -> bytes:
    """The feed as RSS 2.0, UTF-8, indented."""
    rss = ET.Element("rss", {"version": "2.0", "xmlns:lamina": NS})
    channel = ET.SubElement(rss, "channel")
    _text(channel, "title", feed.title)
    _text(channel, "link", feed.link)
    _text(channel, "description", feed.description)
    _text(channel, "generator", "Lamina")
    _text(channel, _w("key"), feed.public_key)
    for item in feed.items:
        element = ET.SubElement(channel, "item")
        _text(element, "title", f"{item.label} {item.version}")
        if item.description:
            _text(element, "description", item.description)
        _text(element, "guid", f"sha256:{item.definition.sha256}").set("isPermaLink", "false")
        enclosure = {
            "url": item.definition.urls[0],
            "length": str(item.definition.size),
            "type": "application/xml",
        }
        ET.SubElement(element, "enclosure", enclosure)
        attrs = {
            "name": item.name,
            "version": str(item.version),
            "kind": item.kind,
            "label": item.label,
        }
        ET.SubElement(element, _w("appliance"), attrs)
        for ref in (item.definition, *item.files):
            _file(element, ref)
    ET.indent(rss)
    data: bytes = ET.tostring(rss, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


# -- reading ---------------------------------------------------------------------------------


def parse_feed(data: bytes, url: str) -> Feed:
    """Read a feed fetched from ``url`` (relative file URLs are resolved against it). Raise
    XMLInvalid (a 400), naming line and element, for hostile or malformed XML or a feed that
    breaks the format. Check the feed's signature before calling this (``verify.verify_feed``
    does both)."""
    return _Reader(read_xml(data, WHAT, MAX_BYTES), url).feed()


class _Reader:
    def __init__(self, doc: Document, url: str) -> None:
        self.doc = doc
        self.url = url

    def _one(self, parent: ET.Element, tag: str) -> ET.Element:
        found = parent.findall(tag)
        if len(found) != 1:
            name = tag.replace(f"{{{NS}}}", "lamina:")
            raise self.doc.error(parent, f"needs exactly one <{name}>, found {len(found)}")
        return found[0]

    def _string(self, parent: ET.Element, tag: str) -> str:
        return (self._one(parent, tag).text or "").strip()

    def _attr(self, element: ET.Element, name: str, pattern: re.Pattern[str] | None = None) -> str:
        value = element.get(name)
        if value is None or (pattern is not None and not pattern.fullmatch(value)):
            raise self.doc.error(element, f"attribute {name}={value!r} is missing or invalid")
        return value

    def feed(self) -> Feed:
        root = self.doc.root
        if root.tag != "rss" or root.get("version") != "2.0":
            raise self.doc.error(root, 'a channel feed is an <rss version="2.0"> document')
        channel = self._one(root, "channel")
        items = tuple(self._item(e) for e in channel.findall("item"))
        seen: set[tuple[str, Version]] = set()
        for element, item in zip(channel.findall("item"), items, strict=True):
            if (item.name, item.version) in seen:
                raise self.doc.error(element, f"{item.name} {item.version} is listed twice")
            seen.add((item.name, item.version))
        return Feed(
            title=self._string(channel, "title"),
            link=self._string(channel, "link"),
            description=self._string(channel, "description"),
            public_key=self._string(channel, _q("key")),
            items=items,
        )

    def _item(self, element: ET.Element) -> Item:
        appliance = self._one(element, _q("appliance"))
        kind = self._attr(appliance, "kind")
        if kind not in KINDS:
            raise self.doc.error(appliance, f"kind {kind!r} is not one of {', '.join(KINDS)}")
        try:
            version = Version.parse(self._attr(appliance, "version"))
        except InvalidRequest as exc:
            raise self.doc.error(appliance, exc.message) from None
        files = [self._file(e) for e in element.findall(_q("file"))]
        definitions = [f for f in files if f.role == "definition"]
        if len(definitions) != 1:
            raise self.doc.error(element, "an item needs exactly one file with role definition")
        description = element.find("description")
        return Item(
            name=self._attr(appliance, "name", _NAME),
            version=version,
            kind=kind,
            label=appliance.get("label", ""),
            description=(description.text or "").strip() if description is not None else "",
            definition=definitions[0],
            files=tuple(f for f in files if f.role != "definition"),
        )

    def _file(self, element: ET.Element) -> FileRef:
        role = self._attr(element, "role")
        if role not in ROLES:
            raise self.doc.error(element, f"role {role!r} is not one of {', '.join(ROLES)}")
        urls = []
        for url_element in element.findall(_q("url")):
            text = (url_element.text or "").strip()
            try:
                url = urljoin(self.url, text)
                scheme = urlsplit(url).scheme
            except ValueError:  # e.g. an unclosed [IPv6 address]
                scheme = ""
            if scheme not in ("http", "https"):
                raise self.doc.error(url_element, f"{text!r} is not an http(s) URL")
            urls.append(url)
        if not urls:
            raise self.doc.error(element, "a file needs at least one <lamina:url>")
        return FileRef(
            role=role,
            sha256=self._attr(element, "sha256", _SHA256),
            size=int(self._attr(element, "size", re.compile(r"[0-9]{1,19}"))),
            signature=self._attr(element, "signature"),
            urls=tuple(urls),
            format=element.get("format"),
        )
