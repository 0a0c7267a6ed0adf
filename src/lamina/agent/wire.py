"""What the manager and its agents say to each other (JSON over mutual TLS).

Both sides import these schemas; neither imports the other's internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GUEST_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
DIGEST = r"^[0-9a-f]{64}$"
PROCEDURES = (
    "server_info",
    "get_diskspace_used",
    "get_virt_uptime",
    "get_downloadprogress",
    "get_downloadspeed",
    "disk_create",
    "disk_remove",
    "cache_check",
    "cache_install",
    "cache_remove",
    "guest_define",
    "guest_start",
    "guest_stop",
    "guest_pause",
    "guest_resume",
    "guest_reboot",
    "guest_destroy",
    "guest_undefine",
    "guest_console",
    "guest_capture",
    "cache_read",
    "volume_create",
    "volume_delete",
    "volume_extend",
    "volume_list",
    "snapshot_create",
    "snapshot_delete",
    "snapshot_list",
    "volume_export",
    "volume_unexport",
    "export_list",
    "guest_attach_disk",
    "guest_detach_disk",
    "guest_disks",
)
#: A disk's serial number as the guest sees it (``/sys/block/vdX/serial``): virtio-blk keeps
#: 20 bytes.
SERIAL = r"^[a-z0-9_-]{1,20}$"
VOLUME_ID = r"^vol-[0-9a-f]{8,32}$"
SNAPSHOT_ID = r"^snap-[0-9a-f]{8,32}$"
#: A hot-plugged disk's device name in the guest (vda is the boot disk).
DISK_TARGET = r"^vd[b-z]$"


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiskUsage(Wire):
    #: Bytes Lamina's guest disks and cache take on this host.
    used_bytes: int
    free_bytes: int
    total_bytes: int


class Transfer(Wire):
    source: str
    bytes_done: int
    bytes_total: int | None
    #: Bytes per second since the transfer began.
    rate: float


class DownloadStatus(Wire):
    #: Fraction done of what is being fetched, or -1 when nothing is.
    progress: float
    #: Kilobytes per second, or -1 when nothing is being fetched.
    speed_kbps: float
    active: list[str] = []
    transfers: list[Transfer] = []


class GuestStatus(Wire):
    name: str
    state: str
    vcpus: int
    memory_mib: int
    uptime_seconds: float | None


class ServerInfo(Wire):
    version: str
    hostname: str
    uptime_seconds: float
    capabilities: list[str]
    domain_type: str
    kvm: bool
    vcpus: int
    memory_mib: int


class HostStatus(Wire):
    """Everything a heartbeat needs, in one call."""

    info: ServerInfo
    disk: DiskUsage
    downloads: DownloadStatus
    guests: list[GuestStatus]


class CacheInstall(Wire):
    #: file:// or http(s):// URL, or an absolute path on the host.
    source: str
    sha256: str | None = Field(None, pattern=DIGEST)


class CacheEntry(Wire):
    sha256: str
    size: int
    path: str


class DiskCreate(Wire):
    guest: str = Field(pattern=GUEST_NAME)
    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    size_bytes: int | None = Field(None, gt=0)
    format: Literal["qcow2", "raw"] = "qcow2"
    #: Digest of a cached image to use as the disk's read-only base (copy-on-write).
    backing: str | None = Field(None, pattern=DIGEST)
    #: A raw disk made with this filesystem (``mkfs.ext4``), empty: an instance layer.
    filesystem: Literal["ext4"] | None = None
    #: A raw disk holding a tar archive of these files (name -> text): a config disk.
    files: dict[str, str] | None = None


class DiskInfo(Wire):
    guest: str
    name: str
    path: str
    format: str
    size_bytes: int


class GuestDisk(Wire):
    """A disk of a guest: one made with ``disk_create`` (by ``name``), or, with ``layer``,
    a read-only layer image in the host's cache that every guest using it shares."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    format: Literal["qcow2", "raw"] = "qcow2"
    readonly: bool = False
    layer: str | None = Field(None, pattern=DIGEST)
    #: What the guest finds the disk by (``lamina.layers=`` etc. on the kernel command line).
    serial: str | None = Field(None, pattern=SERIAL)


class GuestDefinition(Wire):
    vcpus: int = Field(ge=1, le=64)
    memory_mib: int = Field(ge=16, le=1024 * 1024)
    kernel: str | None = Field(None, pattern=DIGEST)
    initrd: str | None = Field(None, pattern=DIGEST)
    cmdline: str = Field("", max_length=4096)
    disks: list[GuestDisk] = []


class GuestCapture(Wire):
    """Turn a guest's instance layer into a read-only layer image in the host's cache."""

    #: The ext4 disk whose ``data`` folder (the overlay's upper directory) is captured.
    disk: str = Field("upper", pattern=r"^[a-z0-9_-]{1,32}$")
    #: Paths, relative to the root, left out of the layer (and everything under them).
    exclude: list[str] = []
    format: Literal["squashfs", "erofs"] = "squashfs"


class ConsoleChunk(Wire):
    data: str
    #: Byte offset to ask for next.
    offset: int


class EnrolRequest(Wire):
    token: str = Field(min_length=10, max_length=300)
    csr: str = Field(max_length=20000)


class EnrolResponse(Wire):
    host_id: str
    name: str
    certificate: str
    ca_certificate: str


# -- volumes (the volume server role) and guest disks ------------------------------------


class VolumeCreate(Wire):
    volume: str = Field(pattern=VOLUME_ID)
    size_bytes: int = Field(gt=0)
    #: Create from this snapshot (a size below the snapshot's is refused).
    snapshot: str | None = Field(None, pattern=SNAPSHOT_ID)
    #: Copy-on-write when the backend can, else a full copy.
    clone: bool = True


class VolumeInfo(Wire):
    volume: str
    #: Virtual size.
    size_bytes: int
    allocated_bytes: int
    backend: str
    export_format: Literal["raw", "qcow2"]
    #: The snapshot a copy-on-write clone depends on.
    cloned_from: str | None = None


class VolumeExtend(Wire):
    size_bytes: int = Field(gt=0)


class SnapshotCreate(Wire):
    snapshot: str = Field(pattern=SNAPSHOT_ID)


class SnapshotInfo(Wire):
    snapshot: str
    volume: str
    size_bytes: int
    allocated_bytes: int


class VolumeExport(Wire):
    #: IPv4/IPv6 address of the attaching host: the only initiator allowed.
    initiator_address: str = Field(max_length=64)


class ExportInfo(Wire):
    volume: str
    iqn: str
    lun: int
    tid: int
    #: host:port the initiator connects to.
    portal: str
    initiator_address: str
    export_format: Literal["raw", "qcow2"]


class DiskAttach(Wire):
    iqn: str = Field(max_length=223)
    lun: int = Field(1, ge=0, le=16383)
    #: host:port of the iSCSI portal.
    portal: str = Field(max_length=300)
    format: Literal["raw", "qcow2"] = "raw"
    #: The volume id, shown in the guest as the disk's serial.
    serial: str | None = Field(None, pattern=SERIAL)


class GuestDiskInfo(Wire):
    target: str
    #: A file path, or ``iscsi://host:port/<iqn>/<lun>`` for an iSCSI disk.
    source: str | None = None
