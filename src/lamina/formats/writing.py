"""``Appliance`` -> appliance XML, built with ElementTree in the schema's element order.

``parse_appliance(write_appliance(a)) == a`` for every published appliance; ``channel build``
writes the published form of a source definition this way, once it has the files' digests.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from lamina.formats.definition import Appliance, Blob, Hardware


def _child(parent: ET.Element, tag: str, text: object | None) -> None:
    if text is not None:
        ET.SubElement(parent, tag).text = str(text)


def _attrs(**values: object | None) -> dict[str, str]:
    return {key: str(value) for key, value in values.items() if value is not None}


def _blob(parent: ET.Element, tag: str, blob: Blob | None) -> None:
    if blob is not None:
        ET.SubElement(
            parent,
            tag,
            _attrs(format=blob.format, sha256=blob.sha256, size=blob.size, source=blob.source),
        )


def _hardware(root: ET.Element, hardware: Hardware) -> None:
    element = ET.SubElement(root, "hardware")
    _child(element, "cpus", hardware.cpus)
    _child(element, "memory", hardware.memory_kib)
    _child(element, "ostype", hardware.ostype)
    for disk in hardware.disks:
        ET.SubElement(
            element,
            "disk",
            _attrs(name=disk.name, type=disk.type, file=disk.file, size=disk.size_mib),
        )


def write_appliance(appliance: Appliance) -> bytes:
    """The definition as UTF-8 XML, indented, with an XML declaration."""
    a = appliance
    root = ET.Element("appliance", {"version": "1.0", "name": a.name, "kind": a.kind})
    _child(root, "label", a.label)
    _child(root, "description", a.description or None)
    _child(root, "version", a.version)
    _child(root, "size", a.size_mib)
    _child(root, "url", a.url)
    _child(root, "sig", a.sig)
    for name in a.provides:
        _child(root, "provides", name)
    _child(root, "webpanel", a.webpanel)
    if a.hardware is not None:
        _hardware(root, a.hardware)
    for dependency in a.dependencies:
        _child(root, "dependency", dependency)
    if a.substrate is not None:
        versions = str(a.substrate.versions) or None
        ET.SubElement(root, "substrate", _attrs(name=a.substrate.name, version=versions))
    if a.layers:
        layers = ET.SubElement(root, "layers")
        for layer in a.layers:
            _blob(layers, "layer", layer)
    _blob(root, "image", a.image)
    if a.kernel is not None:
        boot = ET.SubElement(root, "boot")
        _blob(boot, "kernel", a.kernel)
        _blob(boot, "initrd", a.initrd)
        _child(boot, "cmdline", a.cmdline)
    if a.variables:
        variables = ET.SubElement(root, "variables")
        for v in a.variables:
            required = "true" if v.required else None
            description = v.description or None
            ET.SubElement(
                variables,
                "variable",
                _attrs(
                    name=v.name,
                    type=v.type,
                    default=v.default,
                    required=required,
                    description=description,
                ),
            )
    if a.ports:
        ports = ET.SubElement(root, "ports")
        for port in a.ports:
            ET.SubElement(
                ports,
                "port",
                _attrs(
                    number=port.number,
                    variable=port.variable,
                    protocol=port.protocol,
                    name=port.name,
                    description=port.description or None,
                ),
            )
    if a.templates:
        templates = ET.SubElement(root, "templates")
        for path in a.templates:
            ET.SubElement(templates, "template", {"path": path})
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"
