"""libvirt domain XML for a ``GuestSpec``, built with ElementTree (never string templates).

The output is checked against golden files in ``tests/unit/golden/``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from lamina.agent.drivers.base import GuestDisk, GuestSpec, GuestTags, NetworkDisk

# Lamina's own element under <metadata>: who made the guest (``GuestTags``: deployment,
# instance, created) and, live only, when it was started (the libvirt driver adds that).
METADATA_NS = "https://lamina.dev/xmlns/guest/1"
METADATA_PREFIX = "lamina"
METADATA_ROOT = "guest"

DOMAIN_TYPES = ("kvm", "qemu", "test")

ET.register_namespace(METADATA_PREFIX, METADATA_NS)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain_xml(spec: GuestSpec, domain_type: str, emulator: str | None = None) -> str:
    """The ``<domain>`` document defining ``spec`` for libvirt domain type ``domain_type``
    ('kvm', 'qemu' for TCG software emulation, or 'test' for libvirt's test driver).

    Raises ``ValueError`` for an unknown domain type or a spec libvirt would reject.
    """
    if domain_type not in DOMAIN_TYPES:
        raise ValueError(f"unknown domain type {domain_type!r}; known: {', '.join(DOMAIN_TYPES)}")
    if spec.vcpus < 1 or spec.memory_mib < 1:
        raise ValueError("a guest needs at least one vCPU and 1 MiB of memory")
    if spec.initrd and not spec.kernel:
        raise ValueError("an initrd needs a kernel")

    domain = ET.Element("domain", type=domain_type)
    _sub(domain, "name", spec.name)
    if spec.uuid:
        _sub(domain, "uuid", spec.uuid)
    metadata = _sub(domain, "metadata")
    # An element in our namespace marks the guest as Lamina's; start() adds its start time.
    lamina = ET.SubElement(metadata, f"{{{METADATA_NS}}}{METADATA_ROOT}")
    if spec.tags is not None:
        for key, value in _tag_values(spec.tags):
            ET.SubElement(lamina, f"{{{METADATA_NS}}}{key}").text = value
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.vcpus))

    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel:
        _sub(os_el, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_el, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_el, "cmdline", spec.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")

    features = _sub(domain, "features")
    _sub(features, "acpi")  # without ACPI, shutdown() could only ever force the guest off
    _sub(features, "apic")
    if domain_type == "kvm":
        _sub(domain, "cpu", mode="host-passthrough")

    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    if emulator:
        _sub(devices, "emulator", emulator)
    for disk in spec.disks:
        disk_el = _sub(devices, "disk", type="file", device="disk")
        _sub(disk_el, "driver", name="qemu", type=disk.format)
        _sub(disk_el, "source", file=disk.path)
        _sub(disk_el, "target", dev=disk.target, bus="virtio")
        if disk.readonly:
            _sub(disk_el, "readonly")
        if disk.serial:
            _sub(disk_el, "serial", disk.serial)

    for nic in spec.nics:
        if nic.bridge:
            # libvirt makes the tap and puts it into the bridge.
            nic_el = _sub(devices, "interface", type="bridge")
            _sub(nic_el, "mac", address=nic.mac)
            _sub(nic_el, "source", bridge=nic.bridge)
            _sub(nic_el, "target", dev=nic.tap)
        else:
            # libvirt only makes the tap; the agent moves it into its namespace's bridge.
            nic_el = _sub(devices, "interface", type="ethernet")
            _sub(nic_el, "mac", address=nic.mac)
            _sub(nic_el, "target", dev=nic.tap, managed="yes")
        _sub(nic_el, "model", type="virtio")

    if spec.console_log:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=spec.console_log, append="on")
        _sub(serial, "target", port="0")
        console = _sub(devices, "console", type="file")
        _sub(console, "source", path=spec.console_log, append="on")
        _sub(console, "target", type="serial", port="0")
    else:
        serial = _sub(devices, "serial", type="pty")
        _sub(serial, "target", port="0")
        console = _sub(devices, "console", type="pty")
        _sub(console, "target", type="serial", port="0")

    # Appliances need neither; leaving them out saves boot time under TCG.
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")

    ET.indent(domain, space="  ")
    return ET.tostring(domain, encoding="unicode") + "\n"


def _tag_values(tags: GuestTags) -> list[tuple[str, str]]:
    values = [("deployment", tags.deployment), ("instance", tags.instance)]
    if tags.created is not None:
        values.append(("created", repr(tags.created)))
    return [(k, v) for k, v in values if v]


def read_tags(element: ET.Element | None) -> GuestTags:
    """The tags in Lamina's metadata element (as ``domain_xml`` writes it, or as libvirt's
    ``metadata()`` answers it: then without a namespace); empty for an untagged guest."""
    if element is None:
        return GuestTags()

    def text(key: str) -> str | None:
        found = element.find(f"{{{METADATA_NS}}}{key}")
        if found is None:
            found = element.find(key)
        value = (found.text or "").strip() if found is not None else ""
        return value or None

    created = text("created")
    try:
        when = float(created) if created else None
    except ValueError:
        when = None
    return GuestTags(deployment=text("deployment"), instance=text("instance"), created=when)


def domain_tags(domain: str) -> GuestTags:
    """The tags of a domain document."""
    root = ET.fromstring(domain)
    return read_tags(root.find(f"metadata/{{{METADATA_NS}}}{METADATA_ROOT}"))


def network_disk_xml(disk: NetworkDisk) -> str:
    """The ``<disk type='network'>`` device of an iSCSI LUN, for attachDeviceFlags."""
    disk_el = ET.Element("disk", type="network", device="disk")
    _sub(disk_el, "driver", name="qemu", type=disk.format)
    source = _sub(disk_el, "source", protocol="iscsi", name=f"{disk.iqn}/{disk.lun}")
    _sub(source, "host", name=disk.host, port=str(disk.port))
    _sub(disk_el, "target", dev=disk.target, bus="virtio")
    if disk.serial:
        _sub(disk_el, "serial", disk.serial)
    ET.indent(disk_el, space="  ")
    return ET.tostring(disk_el, encoding="unicode") + "\n"


def disk_elements(domain: str) -> dict[str, ET.Element]:
    """Target device name -> ``<disk>`` element of a domain document."""
    root = ET.fromstring(domain)
    found = {}
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        if target is not None and target.get("dev"):
            found[str(target.get("dev"))] = disk
    return found


def disk_source(disk: ET.Element) -> str | None:
    """Where a ``<disk>`` element's bytes come from (see ``GuestDisk.source``)."""
    source = disk.find("source")
    if source is None:
        return None
    if disk.get("type") == "network":
        host = source.find("host")
        name = source.get("name", "")
        if host is None:
            return f"{source.get('protocol')}:///{name}"
        address = host.get("name", "")
        address = f"[{address}]" if ":" in address else address
        return f"{source.get('protocol')}://{address}:{host.get('port', '3260')}/{name}"
    return source.get("file") or source.get("dev")


def guest_disks(domain: str) -> list[GuestDisk]:
    """The disks of a domain document, in target order."""
    return [
        GuestDisk(target, disk_source(el)) for target, el in sorted(disk_elements(domain).items())
    ]
