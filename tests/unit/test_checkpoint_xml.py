"""The libvirt side of checkpoints as pure functions: the snapshot that saves memory only,
what a saved guest needs, and the save image's XML with another host's paths."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from lamina.agent.drivers.base import DiskSpec, GuestSpec
from lamina.agent.drivers.libvirt_saves import (
    machine_types,
    requirements,
    restore_xml,
    snapshot_xml,
    version_text,
)
from lamina.errors import InvalidRequest

SAVED = """<domain type='qemu'>
  <name>lamina-i</name>
  <uuid>c668d165-1def-432d-876e-24b78c24fb31</uuid>
  <metadata><lamina:guest xmlns:lamina='https://lamina.dev/xmlns/guest/1'>
    <lamina:instance>i</lamina:instance></lamina:guest></metadata>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/h1/cache/aaaa</kernel>
    <initrd>/h1/cache/bbbb</initrd>
  </os>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>
  <devices>
    <disk type='file' device='disk'>
      <source file='/h1/cache/layer'/><target dev='vda' bus='virtio'/><readonly/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/h1/guests/lamina-i/upper.img'/><target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='iscsi' name='iqn.x/1'><host name='10.0.0.1' port='3260'/></source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <serial type='file'><source path='/h1/guests/lamina-i/console.log' append='on'/></serial>
    <console type='file'><source path='/h1/guests/lamina-i/console.log' append='on'/></console>
  </devices>
</domain>"""


def spec(**changes: object) -> GuestSpec:
    fields: dict[str, object] = {
        "name": "lamina-i",
        "vcpus": 1,
        "memory_mib": 256,
        "kernel": "/h2/cache/aaaa",
        "initrd": "/h2/cache/bbbb",
        "disks": (
            DiskSpec("/h2/cache/layer", "vda", "raw", True),
            DiskSpec("/h2/guests/lamina-i/upper.img", "vdb", "raw"),
        ),
        "console_log": "/h2/guests/lamina-i/console.log",
    }
    fields.update(changes)
    return GuestSpec(**fields)  # type: ignore[arg-type]


def test_the_restore_xml_changes_only_the_hosts_paths() -> None:
    out = ET.fromstring(restore_xml(SAVED, spec()))
    assert [s.get("file") for s in out.iterfind("devices/disk/source") if s.get("file")] == [
        "/h2/cache/layer",
        "/h2/guests/lamina-i/upper.img",
    ]
    assert out.findtext("os/kernel") == "/h2/cache/aaaa"
    assert out.findtext("os/initrd") == "/h2/cache/bbbb"
    assert {s.get("path") for s in out.iterfind("devices/*/source") if s.get("path")} == {
        "/h2/guests/lamina-i/console.log"
    }
    # What the guest ran as stays: machine, CPU, uuid, device addresses, the network disk.
    assert out.find("os/type").get("machine") == "pc-i440fx-7.2"  # type: ignore[union-attr]
    assert out.findtext("cpu/model") == "qemu64"
    assert out.findtext("uuid") == "c668d165-1def-432d-876e-24b78c24fb31"
    assert out.find("devices/disk/address").get("slot") == "0x02"  # type: ignore[union-attr]
    assert out.find("devices/disk[@type='network']/source").get("name") == "iqn.x/1"  # type: ignore[union-attr]


def test_a_restore_lacking_a_disk_the_guest_had_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="vdb"):
        restore_xml(SAVED, spec(disks=(DiskSpec("/h2/cache/layer", "vda", "raw", True),)))


def test_the_snapshot_saves_memory_and_leaves_every_disk_alone() -> None:
    snap = ET.fromstring(snapshot_xml(SAVED, __import__("pathlib").Path("/tmp/mem")))
    memory = snap.find("memory")
    assert memory is not None and memory.attrib == {"snapshot": "external", "file": "/tmp/mem"}
    assert [(d.get("name"), d.get("snapshot")) for d in snap.iterfind("disks/disk")] == [
        ("vda", "no"),
        ("vdb", "no"),
        ("vdc", "no"),
    ]


def test_what_a_saved_guest_needs() -> None:
    saved = requirements(SAVED, "qemu", "7.2.22", "Skylake")
    assert (saved.machine, saved.cpu_mode, saved.cpu_model, saved.arch) == (
        "pc-i440fx-7.2",
        "custom",
        "qemu64",
        "x86_64",
    )
    assert (saved.vcpus, saved.memory_mib, saved.qemu_version) == (1, 256, "7.2.22")
    passthrough = SAVED.replace(
        "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>",
        "<cpu mode='host-passthrough'>",
    )
    assert requirements(passthrough, "kvm", "7.2.22", "Skylake").cpu_model == "Skylake"


def test_versions_and_machine_types() -> None:
    assert version_text(7002022) == "7.2.22" and version_text(9000000) == "9.0.0"
    caps = """<capabilities><guest><arch name='x86_64'>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
      <domain type='qemu'/><domain type='kvm'><machine>pc-q35-7.2</machine></domain>
      </arch></guest><guest><arch name='aarch64'><machine>virt</machine></arch></guest>
    </capabilities>"""
    assert machine_types(caps, "x86_64") == ("pc", "pc-i440fx-7.2", "pc-q35-7.2")
