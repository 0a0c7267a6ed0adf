"""Domain XML against golden files. Regenerate them with LAMINA_REGEN_GOLDEN=1."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from lamina.agent.drivers.base import DiskSpec, GuestSpec, GuestTags, NetworkDisk, NicSpec
from lamina.agent.drivers.domain_xml import (
    domain_tags,
    domain_xml,
    guest_disks,
    network_disk_xml,
)

GOLDEN = Path(__file__).parent / "golden"


def assert_golden(actual: str, name: str) -> None:
    """Compare ``actual`` with ``golden/<name>``; rewrite the file when LAMINA_REGEN_GOLDEN=1."""
    path = GOLDEN / name
    if os.environ.get("LAMINA_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"missing golden file {path}; run with LAMINA_REGEN_GOLDEN=1"
    assert actual == path.read_text(), f"{name} differs; review and LAMINA_REGEN_GOLDEN=1"


KERNEL_BOOT = GuestSpec(
    name="appliance-1",
    uuid="5b0c1c5e-3c1f-4f7e-9a53-2f0d0c7a8a11",
    vcpus=2,
    memory_mib=512,
    kernel="/var/lib/lamina/kernels/vmlinuz",
    initrd="/var/lib/lamina/kernels/initrd.img",
    cmdline="console=ttyS0 quiet",
    disks=(
        DiskSpec(
            path="/var/lib/lamina/images/base.squashfs",
            target="vda",
            format="raw",
            readonly=True,
            serial="l0",
        ),
        DiskSpec(path="/var/lib/lamina/volumes/data.qcow2", target="vdb"),
    ),
    console_log="/var/log/lamina/guests/appliance-1.log",
)

DISK_BOOT = GuestSpec(
    name="disk-boot",
    vcpus=1,
    memory_mib=256,
    disks=(DiskSpec(path="/var/lib/lamina/volumes/root.qcow2", target="vda"),),
)


@pytest.mark.parametrize("domain_type", ["kvm", "qemu", "test"])
def test_kernel_boot(domain_type: str) -> None:
    emulator = "/usr/bin/qemu-system-x86_64" if domain_type != "test" else None
    assert_golden(domain_xml(KERNEL_BOOT, domain_type, emulator), f"kernel-boot-{domain_type}.xml")


def test_disk_boot_without_console_log() -> None:
    assert_golden(domain_xml(DISK_BOOT, "qemu"), "disk-boot-qemu.xml")


def test_names_are_escaped() -> None:
    spec = GuestSpec(name="a<b&c", vcpus=1, memory_mib=64, cmdline="x='1' && y=\"2\"", kernel="/k")
    xml = domain_xml(spec, "test")
    assert "<name>a&lt;b&amp;c</name>" in xml
    assert "<cmdline>x='1' &amp;&amp; y=\"2\"</cmdline>" in xml


@pytest.mark.parametrize(
    ("spec", "domain_type"),
    [
        (DISK_BOOT, "xen"),
        (GuestSpec(name="g", vcpus=0, memory_mib=64), "qemu"),
        (GuestSpec(name="g", vcpus=1, memory_mib=64, initrd="/i"), "qemu"),
    ],
)
def test_rejects_bad_input(spec: GuestSpec, domain_type: str) -> None:
    with pytest.raises(ValueError):
        domain_xml(spec, domain_type)


def test_network_disk() -> None:
    disk = NetworkDisk(
        iqn="iqn.2026-11.lamina:vol-0123456789abcdef",
        host="192.0.2.5",
        port=3260,
        target="vdb",
        format="qcow2",
        serial="vol-0123456789abcdef",
    )
    assert_golden(network_disk_xml(disk), "network-disk-iscsi.xml")
    plain = NetworkDisk(iqn="iqn.2026-11.lamina:vol-00000001", host="::1", target="vdc", lun=2)
    assert_golden(network_disk_xml(plain), "network-disk-iscsi-raw.xml")
    assert plain.source == "iscsi://[::1]:3260/iqn.2026-11.lamina:vol-00000001/2"
    domain = domain_xml(DISK_BOOT, "qemu").replace(
        "</devices>", network_disk_xml(disk) + "</devices>"
    )
    assert [(d.target, d.source) for d in guest_disks(domain)] == [
        ("vda", "/var/lib/lamina/volumes/root.qcow2"),
        ("vdb", disk.source),
    ]


NIC_BRIDGE = NicSpec(mac="52:54:00:12:34:56", tap="lmt525400123456", bridge="lmb0123456789ab")
NIC_NAMESPACE = NicSpec(mac="52:54:00:ab:cd:ef", tap="lmt525400abcdef")


def test_nics_on_the_hosts_network_and_in_a_namespace() -> None:
    """On the host's network libvirt puts the tap into the bridge (type='bridge'); in a
    namespace it only makes the tap (type='ethernet', managed), which the agent moves."""
    spec = dataclasses.replace(DISK_BOOT, nics=(NIC_BRIDGE,))
    assert_golden(domain_xml(spec, "qemu"), "nic-bridge-qemu.xml")
    spec = dataclasses.replace(DISK_BOOT, nics=(NIC_NAMESPACE, NIC_BRIDGE))
    assert_golden(domain_xml(spec, "qemu"), "nic-ethernet-qemu.xml")


def test_a_guest_is_tagged_with_who_made_it() -> None:
    tags = GuestTags(
        deployment="0123456789abcdef",
        instance="5b0c1c5e-3c1f-4f7e-9a53-2f0d0c7a8a11",
        created=1796626549.5,
    )
    xml = domain_xml(dataclasses.replace(DISK_BOOT, tags=tags), "qemu")
    assert_golden(xml, "disk-boot-tagged-qemu.xml")
    assert domain_tags(xml) == tags
    assert domain_tags(domain_xml(DISK_BOOT, "qemu")) == GuestTags()
