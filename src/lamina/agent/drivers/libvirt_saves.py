"""Checkpoints of libvirt guests: memory saved while the guest keeps its process, and saved
guests restored with this host's paths.

Saving: the guest is paused, libvirt writes its memory with an external memory snapshot
whose disks are all ``snapshot='no'`` and that keeps no metadata (the file is libvirt's save
image: ``virDomainRestoreFlags`` reads it), the caller copies the disks, and the guest is
resumed. It never stops, so taking a checkpoint leaves it as it was. libvirt's test driver
has no snapshots: there the guest is saved (stopped) and restored paused at once.

Restoring: the save image's own XML (``saveImageGetXMLDesc``: machine type, CPU, devices'
addresses exactly as they ran) with only the host's paths changed (disk files by target, the
kernel, initrd and console log), which is what ``virDomainRestoreFlags`` accepts as a
changed definition; the persistent definition is then written from the guest's spec.
"""

from __future__ import annotations

import dataclasses
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt

from lamina.agent.drivers.base import GuestSpec, SavedGuest
from lamina.agent.drivers.domain_xml import disk_elements, domain_tags, domain_xml
from lamina.errors import InvalidRequest

#: Where libvirt's QEMU driver keeps the version it reports (major * 1e6 + minor * 1e3 + micro).
_VERSION_PARTS = (1_000_000, 1_000)


def version_text(number: int) -> str:
    """``7002022`` -> ``7.2.22``."""
    major, rest = divmod(number, _VERSION_PARTS[0])
    minor, micro = divmod(rest, _VERSION_PARTS[1])
    return f"{major}.{minor}.{micro}"


def machine_types(capabilities: str, arch: str) -> tuple[str, ...]:
    """Every machine type (names and the canonical names they stand for) the host's
    capabilities list for guests of ``arch``."""
    root = ET.fromstring(capabilities)
    found: set[str] = set()
    for guest in root.iterfind("guest"):
        arch_el = guest.find("arch")
        if arch_el is None or arch_el.get("name") != arch:
            continue
        for machine in arch_el.iter("machine"):
            if machine.text:
                found.add(machine.text.strip())
            if machine.get("canonical"):
                found.add(str(machine.get("canonical")))
    return tuple(sorted(found))


def snapshot_xml(live: str, memory: Path) -> str:
    """An external memory snapshot of the guest whose live XML is ``live``: memory into
    ``memory``, no disk touched (each listed, else libvirt would snapshot it)."""
    snap = ET.Element("domainsnapshot")
    ET.SubElement(snap, "memory", snapshot="external", file=str(memory))
    disks = ET.SubElement(snap, "disks")
    for target in sorted(disk_elements(live)):
        ET.SubElement(disks, "disk", name=target, snapshot="no")
    return ET.tostring(snap, encoding="unicode")


def requirements(live: str, domain_type: str, qemu: str | None, host_cpu: str) -> SavedGuest:
    """What the guest running as ``live`` needs of a host to be restored."""
    root = ET.fromstring(live)
    os_type = root.find("os/type")
    cpu = root.find("cpu")
    mode = cpu.get("mode") if cpu is not None else None
    model = cpu.findtext("model") if cpu is not None else None
    if mode in ("host-passthrough", "host-model"):
        model = host_cpu
    memory = root.find("memory")
    amount = int(memory.text or 0) if memory is not None and memory.text else 0
    unit = memory.get("unit", "KiB") if memory is not None else "KiB"
    memory_mib = amount // 1024 if unit == "KiB" else amount
    return SavedGuest(
        domain_type=domain_type,
        vcpus=int(root.findtext("vcpu") or 1),
        memory_mib=memory_mib,
        qemu_version=qemu,
        machine=os_type.get("machine") if os_type is not None else None,
        cpu_mode=mode,
        cpu_model=model,
        arch=os_type.get("arch") if os_type is not None else None,
    )


def restore_xml(saved: str, spec: GuestSpec) -> str:
    """The save image's XML ``saved`` with ``spec``'s paths: disk files by target, kernel,
    initrd and console log. InvalidRequest if ``spec`` lacks a file disk the guest had."""
    root = ET.fromstring(saved)
    paths = {d.target: d.path for d in spec.disks}
    for disk in root.iterfind("devices/disk"):
        target_el = disk.find("target")
        target = target_el.get("dev", "") if target_el is not None else ""
        if disk.get("type") != "file":
            continue
        if target not in paths:
            raise InvalidRequest(f"the saved guest has a disk at {target} the restore lacks")
        source = disk.find("source")
        if source is None:
            source = ET.SubElement(disk, "source")
        source.set("file", paths[target])
    os_el = root.find("os")
    for tag, path in (("kernel", spec.kernel), ("initrd", spec.initrd)):
        element = os_el.find(tag) if os_el is not None else None
        if element is not None and path:
            element.text = path
    if spec.console_log:
        for tag in ("serial", "console"):
            for device in root.iterfind(f"devices/{tag}"):
                source = device.find("source")
                if device.get("type") == "file" and source is not None:
                    source.set("path", spec.console_log)
    return ET.tostring(root, encoding="unicode")


def checkpoint(
    conn: libvirt.virConnect,
    dom: libvirt.virDomain,
    domain_type: str,
    host_cpu: str,
    memory: Path,
    while_paused: Callable[[], None],
) -> SavedGuest:
    """See ``Hypervisor.checkpoint``; the caller holds the connection's lock and checked
    that the guest runs or is paused."""
    running = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    if running:
        dom.suspend()
    paused_at = time.monotonic()
    try:
        live = str(dom.XMLDesc(0))
        if domain_type == "test":
            dom.save(str(memory))
            dom = _restore_paused(conn, memory, None, domain_type, dom.name())
        else:
            dom.snapshotCreateXML(
                snapshot_xml(live, memory), libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            )
        while_paused()
    finally:
        if running:
            dom.resume()
    paused = time.monotonic() - paused_at
    qemu = version_text(conn.getVersion())
    saved = requirements(live, domain_type, qemu, host_cpu)
    return dataclasses.replace(saved, paused_seconds=round(paused, 3))


def restore(
    conn: libvirt.virConnect, spec: GuestSpec, memory: Path, domain_type: str, paused: bool
) -> None:
    """See ``Hypervisor.restore``; the caller holds the connection's lock."""
    saved = str(conn.saveImageGetXMLDesc(str(memory), 0))
    uuid = ET.fromstring(saved).findtext("uuid")
    created = None
    try:
        existing = conn.lookupByName(spec.name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
        existing = None
    if existing is not None:
        created = domain_tags(existing.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).created
        if existing.isActive():
            existing.destroy()
        if existing.UUIDString() != uuid and existing.isPersistent():
            # Another guest of that name (made again since): the saved one replaces it.
            existing.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    _restore_paused(conn, memory, restore_xml(saved, spec), domain_type, spec.name)
    tags = spec.tags
    if tags is not None and created is not None:
        tags = dataclasses.replace(tags, created=created)
    persistent = dataclasses.replace(spec, uuid=uuid, tags=tags)
    conn.defineXML(domain_xml(persistent, domain_type))
    if not paused:
        conn.lookupByName(spec.name).resume()


def _restore_paused(
    conn: libvirt.virConnect, memory: Path, xml: str | None, domain_type: str, name: str
) -> libvirt.virDomain:
    """Restore the saved guest with its vCPUs paused (the test driver has no such flag:
    there it is paused right after; nor does it change a saved guest's XML: its guests have
    no files anyway)."""
    if domain_type != "test":
        conn.restoreFlags(str(memory), xml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
        return conn.lookupByName(name)
    conn.restoreFlags(str(memory), None, 0)
    dom = conn.lookupByName(name)
    dom.suspend()
    return dom
