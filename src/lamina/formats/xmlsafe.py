"""Reading untrusted XML (appliance definitions, channel feeds) with defusedxml.

No DTD, no entity, no external reference is ever processed: a document with a ``DOCTYPE``
(the billion laughs, external entities) is refused at once. Every element remembers the line
it starts on, so every error can say where the problem is.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from lamina.errors import InvalidRequest


class XMLInvalid(InvalidRequest):
    """A document that is not well-formed, is hostile, or breaks the format's rules; the
    message names the document, the line and the element."""

    def __init__(self, what: str, reason: str, line: int | None, element: str | None) -> None:
        where = ", ".join(
            part
            for part in (f"line {line}" if line else "", f"<{element}>" if element else "")
            if part
        )
        super().__init__(
            f"{what}{', ' + where if where else ''}: {reason}",
            line=line,
            element=element,
        )
        self.reason = reason
        self.line = line
        self.element = element


def local_name(tag: str) -> str:
    """``{namespace}name`` -> ``name``."""
    return tag.rpartition("}")[2]


class _LineBuilder(ET.TreeBuilder):
    """A TreeBuilder that records each element's first line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[ET.Element, int] = {}
        self.locate: Callable[[], int] = lambda: 0

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        element = super().start(tag, attrs)
        self.lines[element] = self.locate()
        return element


@dataclass(frozen=True)
class Document:
    """A parsed document: its root and the line of each element."""

    what: str
    root: ET.Element
    lines: dict[ET.Element, int]

    def error(self, element: ET.Element | None, reason: str) -> XMLInvalid:
        """An error about ``element`` (None: the document as a whole)."""
        if element is None:
            return XMLInvalid(self.what, reason, None, None)
        return XMLInvalid(self.what, reason, self.lines.get(element), local_name(element.tag))


def read_xml(data: bytes, what: str, max_bytes: int) -> Document:
    """Parse ``data`` (``what`` names it in errors: "appliance XML", "channel feed"). Raise
    XMLInvalid for a document over ``max_bytes``, with a DTD or entity declaration, or not
    well-formed."""
    if len(data) > max_bytes:
        raise XMLInvalid(
            what, f"{len(data)} bytes is more than the {max_bytes} allowed", None, None
        )
    builder = _LineBuilder()
    parser = DefusedXMLParser(target=builder, forbid_dtd=True)
    expat = parser.parser
    builder.locate = lambda: int(expat.CurrentLineNumber)
    try:
        parser.feed(data)
        root = parser.close()
    except DefusedXmlException:
        reason = (
            "DTDs and entity declarations are not allowed (billion-laughs and external-entity "
            "attacks are made of them)"
        )
        raise XMLInvalid(what, reason, int(expat.CurrentLineNumber), None) from None
    except LookupError as exc:  # an XML declaration naming an unknown encoding
        raise XMLInvalid(what, f"not well-formed XML: {exc}", 1, None) from None
    except ET.ParseError as exc:
        line = exc.position[0]
        reason = str(exc).split(": line ")[0]
        raise XMLInvalid(what, f"not well-formed XML: {reason}", line, None) from None
    return Document(what, root, builder.lines)
