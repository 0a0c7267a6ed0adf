"""Appliance XML -> ``Appliance``: defusedxml, then Lamina's schema, then the rules the
schema cannot say. Every error is an ``XMLInvalid`` naming the line and the element."""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import cast

import xmlschema

from lamina.errors import InvalidRequest
from lamina.formats.definition import (
    PORT_NUMBERS,
    Appliance,
    Blob,
    BlobRole,
    Disk,
    DiskType,
    Hardware,
    Kind,
    Port,
    Protocol,
    Requirement,
    Variable,
    VariableType,
)
from lamina.formats.variables import check_value
from lamina.formats.versions import Version, VersionRange
from lamina.formats.xmlsafe import Document, local_name, read_xml

SCHEMA_PATH = Path(__file__).with_name("appliance.xsd")
MAX_BYTES = 1024 * 1024
WHAT = "appliance XML"


@functools.cache
def schema() -> xmlschema.XMLSchema10:
    """Lamina's appliance schema (``appliance.xsd``), loaded once."""
    return xmlschema.XMLSchema10(str(SCHEMA_PATH))


def parse_appliance(data: bytes, *, source: bool = False, what: str = WHAT) -> Appliance:
    """Read an appliance definition. A published one (the default) must give every layer,
    image and boot file a ``sha256`` and ``size``; the ``source`` form that ``channel build``
    reads gives a ``source`` path instead. ``what`` names the document in errors. Raise
    XMLInvalid (a 400) for hostile or malformed XML, a schema violation or a broken rule,
    naming the line and element."""
    doc = read_xml(data, what, MAX_BYTES)
    _validate(doc)
    return _Reader(doc, source).appliance()


def _validate(doc: Document) -> None:
    """Raise the schema's first complaint, if any, at the element it is about."""
    for node in doc.root.iter():
        # The format has no namespace; xsi:type and the like would steer the validator.
        if node.tag.startswith("{") or any(key.startswith("{") for key in node.attrib):
            raise doc.error(node, "namespaced elements and attributes are not in the format")
    error = next(schema().iter_errors(doc.root), None)
    if error is None:
        return
    element = error.elem
    index = getattr(error, "index", None)
    if element is not None and isinstance(index, int) and index < len(element):
        element = element[index]  # an unexpected child: point at the child itself
    reason = error.reason or str(error)
    if isinstance(error, xmlschema.XMLSchemaDecodeError):
        type_name = getattr(error.validator, "name", None) or "value"
        reason = f"{error.obj!r} is not a valid {local_name(type_name)}"
    raise doc.error(element, reason.rstrip("."))


class _Reader:
    def __init__(self, doc: Document, source: bool) -> None:
        self.doc = doc
        self.root = doc.root
        self.source = source

    def _text(self, tag: str, parent: ET.Element | None = None) -> str | None:
        element = (self.root if parent is None else parent).find(tag)
        return None if element is None else (element.text or "").strip()

    def _int(self, tag: str, parent: ET.Element | None = None) -> int | None:
        text = self._text(tag, parent)
        return None if text is None else int(text)

    def appliance(self) -> Appliance:
        root = self.root
        provides = tuple((e.text or "").strip() for e in root.findall("provides"))
        name = root.get("name") or (provides[0] if provides else None)
        if name is None:
            raise self.doc.error(
                root, "an appliance needs a name: a name attribute or a <provides> element"
            )
        hardware = root.find("hardware")
        variables = self._variables()
        appliance = Appliance(
            label=self._text("label") or "",
            version=self._version(),
            name=name,
            kind=cast(Kind, root.get("kind", "traditional")),
            description=self._text("description") or "",
            size_mib=self._int("size"),
            url=self._text("url"),
            sig=self._text("sig"),
            provides=provides,
            webpanel=self._text("webpanel"),
            hardware=None if hardware is None else self._hardware(hardware),
            dependencies=tuple(self._requirement(e) for e in root.findall("dependency")),
            substrate=self._substrate(),
            layers=tuple(self._blob(e, "layer") for e in root.findall("layers/layer")),
            image=self._optional_blob("image", "image"),
            kernel=self._optional_blob("boot/kernel", "kernel"),
            initrd=self._optional_blob("boot/initrd", "initrd"),
            cmdline=self._text("boot/cmdline"),
            variables=variables,
            ports=self._ports(variables),
            templates=self._templates(),
        )
        self._check_kind(appliance)
        return appliance

    def _version(self) -> Version:
        try:
            return Version.parse(self._text("version") or "")
        except InvalidRequest as exc:
            raise self.doc.error(self.root.find("version"), exc.message) from None

    def _hardware(self, element: ET.Element) -> Hardware:
        disks = tuple(
            Disk(
                name=d.get("name", ""),
                type=cast(DiskType, d.get("type")),
                file=d.get("file"),
                size_mib=None if d.get("size") is None else int(d.get("size", "")),
            )
            for d in element.findall("disk")
        )
        self._unique(element.findall("disk"), "name", "disk")
        return Hardware(
            cpus=self._int("cpus", element),
            memory_kib=self._int("memory", element),
            ostype=self._text("ostype", element),
            disks=disks,
        )

    def _requirement(self, element: ET.Element) -> Requirement:
        try:
            return Requirement.parse((element.text or "").strip())
        except InvalidRequest as exc:
            raise self.doc.error(element, exc.message) from None

    def _substrate(self) -> Requirement | None:
        element = self.root.find("substrate")
        if element is None:
            return None
        try:
            versions = VersionRange.parse(element.get("version", ""))
        except InvalidRequest as exc:
            raise self.doc.error(element, exc.message) from None
        return Requirement(element.get("name", ""), versions)

    def _optional_blob(self, path: str, role: BlobRole) -> Blob | None:
        element = self.root.find(path)
        return None if element is None else self._blob(element, role)

    def _blob(self, element: ET.Element, role: BlobRole) -> Blob:
        size = element.get("size")
        blob = Blob(
            role=role,
            format=element.get("format"),
            sha256=element.get("sha256"),
            size=None if size is None else int(size),
            source=element.get("source"),
        )
        if self.source and blob.source is None:
            raise self.doc.error(element, "a source definition gives each file a source path")
        if self.source and ".." in Path(blob.source or "").parts:
            raise self.doc.error(element, f"source {blob.source!r} leaves the appliance folder")
        if not self.source and (blob.sha256 is None or blob.size is None):
            raise self.doc.error(element, "a published definition gives each file sha256 and size")
        if not self.source and blob.source is not None:
            raise self.doc.error(element, "source is only for channel build's input")
        return blob

    def _variables(self) -> tuple[Variable, ...]:
        elements = self.root.findall("variables/variable")
        self._unique(elements, "name", "variable")
        variables = []
        for element in elements:
            type_ = cast(VariableType, element.get("type", "string"))
            required = element.get("required", "false") in ("true", "1")
            default = element.get("default")
            if required and default is not None:
                raise self.doc.error(element, "a required variable cannot have a default")
            if default is not None:
                try:
                    default = check_value(type_, default)
                except InvalidRequest as exc:
                    raise self.doc.error(element, f"default {exc.message}") from None
            variables.append(
                Variable(
                    name=element.get("name", ""),
                    type=type_,
                    default=default,
                    required=required,
                    description=element.get("description", ""),
                )
            )
        return tuple(variables)

    def _ports(self, variables: tuple[Variable, ...]) -> tuple[Port, ...]:
        """Each ``<port>``: a number, or an int variable whose value is the number (its
        default, if any, a port number too); one port per number (or variable) and protocol."""
        ports: list[Port] = []
        seen: set[str] = set()
        for element in self.root.findall("ports/port"):
            number, variable = element.get("number"), element.get("variable")
            if (number is None) == (variable is None):
                raise self.doc.error(
                    element, "a port has either a number or a variable (whose value is its number)"
                )
            if variable is not None:
                self._check_port_variable(element, variable, variables)
            port = Port(
                number=None if number is None else int(number),
                protocol=cast(Protocol, element.get("protocol", "tcp")),
                variable=variable,
                name=element.get("name"),
                description=element.get("description", ""),
            )
            if str(port) in seen:
                raise self.doc.error(element, f"a second port {port}")
            seen.add(str(port))
            ports.append(port)
        return tuple(ports)

    def _check_port_variable(
        self, element: ET.Element, name: str, variables: tuple[Variable, ...]
    ) -> None:
        """A port's variable exists, is an int, and defaults (if it does) to a port number."""
        found = next((v for v in variables if v.name == name), None)
        if found is None:
            known = ", ".join(v.name for v in variables) or "none"
            raise self.doc.error(
                element, f"port variable {name!r} is not one of the <variables> (they are: {known})"
            )
        if found.type != "int":
            raise self.doc.error(
                element, f"port variable {name!r} is a {found.type}: a port's variable is an int"
            )
        if found.default is not None and int(found.default) not in PORT_NUMBERS:
            raise self.doc.error(
                element,
                f"port variable {name!r} defaults to {found.default}, not a port number "
                "(1 to 65535)",
            )

    def _templates(self) -> tuple[str, ...]:
        elements = self.root.findall("templates/template")
        self._unique(elements, "path", "template")
        for element in elements:
            if ".." in element.get("path", "").split("/"):
                raise self.doc.error(element, "a template path cannot contain '..'")
        return tuple(e.get("path", "") for e in elements)

    def _unique(self, elements: list[ET.Element], attribute: str, what: str) -> None:
        seen: set[str] = set()
        for element in elements:
            value = element.get(attribute, "")
            if value in seen:
                raise self.doc.error(element, f"a second {what} with {attribute} {value!r}")
            seen.add(value)

    def _check_kind(self, appliance: Appliance) -> None:
        """Which elements each kind needs or cannot have."""
        root = self.root
        a_kind = f"{'an' if appliance.kind == 'application' else 'a'} {appliance.kind} appliance"

        def refuse(tag: str, why: str) -> None:
            element = root.find(tag)
            if element is not None:
                raise self.doc.error(element, f"{a_kind} {why}")

        if appliance.kind == "application":
            if appliance.substrate is None:
                raise self.doc.error(root, "an application appliance names its <substrate>")
            refuse("boot", "boots its substrate's kernel: it has no <boot>")
        else:
            refuse("substrate", "builds on no substrate")
        if appliance.kind == "traditional":
            refuse("layers", "ships one <image>, not <layers>")
        elif not appliance.layers:
            raise self.doc.error(root, f"{a_kind} needs <layers>")
        else:
            refuse("image", "is made of layers, not an <image>")
        if appliance.kind == "substrate" and (appliance.kernel is None or appliance.initrd is None):
            raise self.doc.error(
                root, "a substrate appliance needs <boot> with its kernel and initrd"
            )
        if appliance.templates and not appliance.layers:
            refuse("templates", "has no layer for templates to be in")
