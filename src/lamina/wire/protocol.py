"""What the manager and its agents say to each other (JSON over mutual TLS).

Both sides import these schemas; neither imports the other's internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lamina.errors import InvalidRequest

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
    "network_state",
    "network_list",
    "forward_create",
    "forward_delete",
    "forward_list",
    "migration_source",
    "migration_start",
    "migration_status",
    "migration_tune",
    "migration_abort",
    "incoming_prepare",
    "incoming_finish",
    "incoming_remove",
    "incoming_status",
    "migration_forget",
    "volume_allow",
    "volume_disallow",
    "guest_checkpoint",
    "guest_restore",
)
#: A disk's serial number as the guest sees it (``/sys/block/vdX/serial``): virtio-blk keeps
#: 20 bytes.
SERIAL = r"^[a-z0-9_-]{1,20}$"
VOLUME_ID = r"^vol-[0-9a-f]{8,32}$"
SNAPSHOT_ID = r"^snap-[0-9a-f]{8,32}$"
#: A hot-plugged disk's device name in the guest (vda is the boot disk).
DISK_TARGET = r"^vd[b-z]$"
#: A deployment's id (``lamina.db.deployment``), sent by the manager on every call.
DEPLOYMENT_ID = r"^[0-9a-f]{16}$"
DEPLOYMENT_HEADER = "X-Lamina-Deployment"


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiskUsage(Wire):
    #: Bytes Lamina's guest disks and cache take on this host.
    used_bytes: int
    free_bytes: int
    total_bytes: int
    #: Free bytes where this host's volumes live (its volume server's ``volume_root``), or
    #: None when it is no volume server or its backend cannot tell (lvm, rbd).
    volume_free_bytes: int | None = None


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
    #: The deployment whose manager made the guest (its domain metadata); None: untagged
    #: (made by hand, or before guests were tagged).
    deployment: str | None = None
    #: When it was defined (seconds since the epoch, the host's clock), if tagged.
    created_at: float | None = None


class ServerInfo(Wire):
    version: str
    hostname: str
    uptime_seconds: float
    capabilities: list[str]
    domain_type: str
    kvm: bool
    vcpus: int
    memory_mib: int
    #: How a peer's libvirtd reaches this host's for a migration (``qemu+tls://ADDR/system``,
    #: its certificate from the manager's CA); None: the host has no migration certificate.
    migration_uri: str | None = None
    #: What a saved guest (a checkpoint) needs of a host to be restored on it: the QEMU
    #: version (``8.2.2``), the machine types it runs (``pc-i440fx-8.2``, ...), the host's CPU
    #: model and architecture. None or empty: the hypervisor does not tell.
    qemu_version: str | None = None
    machine_types: list[str] = []
    cpu_model: str | None = None
    arch: str | None = None
    #: The agent's ``tunnel_address`` setting: the underlay address other hosts reach its
    #: VXLAN tunnels at. None: the host part of the address the manager knows it by.
    tunnel_address: str | None = None


class HostStatus(Wire):
    """Everything a heartbeat needs, in one call."""

    info: ServerInfo
    disk: DiskUsage
    downloads: DownloadStatus
    guests: list[GuestStatus]


#: A source ``blob:<sha256>``: the file of the image repository with that digest, fetched
#: from the manager the agent enrolled with (``GET <manager>/blobs/<sha256>``) with the
#: capability sent beside it.
BLOB_SCHEME = "blob:"


class CacheInstall(Wire):
    #: file:// or http(s):// URL, an absolute path on the host, or ``blob:<sha256>``.
    source: str
    sha256: str | None = Field(None, pattern=DIGEST)
    #: For a ``blob:`` source: what the manager's blob route asks for (``Authorization:
    #: Bearer``), good for that host and digest for a few minutes.
    capability: str | None = Field(None, max_length=300)


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
    #: Network interfaces, in order (eth0, eth1, ...); each on a network this host has.
    nics: list[GuestNic] = []


class GuestCapture(Wire):
    """Turn a guest's instance layer into a read-only layer image in the host's cache."""

    #: The ext4 disk whose ``data`` folder (the overlay's upper directory) is captured.
    disk: str = Field("upper", pattern=r"^[a-z0-9_-]{1,32}$")
    #: Paths, relative to the root, left out of the layer (and everything under them).
    exclude: list[str] = []
    format: Literal["squashfs", "erofs"] = "squashfs"


class GuestCheckpoint(Wire):
    """Save a running or paused guest's memory and copy its disks, consistently (paused for
    both), into the host's cache; the guest then goes on as it was."""

    #: The guest's own disks (made with ``disk_create``) to copy with the memory.
    disks: list[str] = Field(["upper", "config"], max_length=8)


class SavedRequirements(Wire):
    """What a saved guest needs of the host it is restored on, as the saving host ran it."""

    domain_type: str
    qemu_version: str | None = None
    machine: str | None = None
    #: ``host-passthrough`` (the host's CPU: the same model is needed), ``custom`` (a named
    #: model, ``qemu64`` under TCG) or None.
    cpu_mode: str | None = None
    cpu_model: str | None = None
    arch: str | None = None
    vcpus: int
    memory_mib: int


class CheckpointFiles(Wire):
    """A guest's checkpoint in the host's cache: its memory (the hypervisor's save image)
    and each disk (qcow2, compact), with what a restore needs."""

    memory: CacheEntry
    disks: dict[str, CacheEntry]
    requires: SavedRequirements
    #: Seconds the guest was paused (memory saved and disks copied).
    paused_seconds: float


class GuestRestore(Wire):
    """Replace the guest (whatever it is doing) by the one saved in ``memory``, with its
    disks written from the cached copies ``disks`` (name -> digest) and the rest of its
    definition (layers, kernel, NICs) from ``definition``; it then runs (or stays paused)."""

    definition: GuestDefinition
    memory: str = Field(pattern=DIGEST)
    disks: dict[str, str]
    paused: bool = False


class ConsoleChunk(Wire):
    data: str
    #: Byte offset to ask for next.
    offset: int


class EnrolRequest(Wire):
    token: str = Field(min_length=10, max_length=300)
    csr: str = Field(max_length=20000)
    #: A second CSR, of the key libvirtd and QEMU authenticate migrations with (a key of its
    #: own: it is written where those daemons read it). None: an older agent.
    migration_csr: str | None = Field(None, max_length=20000)


class EnrolResponse(Wire):
    host_id: str
    name: str
    certificate: str
    ca_certificate: str
    #: The migration certificate (server and client use, for the host's address), when the
    #: request had a ``migration_csr``.
    migration_certificate: str | None = None


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
    #: The deployment that asked for the export and when (the agent's record of it, see
    #: ``lamina.agent.volumes``); None: untagged (exported before exports were tagged).
    deployment: str | None = None
    created_at: float | None = None


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


# -- networks (the host's bridges, dnsmasq, the configuration-service relay, forwards) ----
#
# The manager pushes a host's whole desired network state (``PUT /network``); the agent
# converges to it and keeps it across its own restarts. docs/networks.md has the design.

NETWORK_ID = r"^net-[0-9a-f]{12,32}$"
FORWARD_ID = r"^fwd-[0-9a-f]{8,32}$"
#: Lamina's MAC addresses: QEMU's locally administered prefix, three random bytes.
MAC = r"^52:54:00(:[0-9a-f]{2}){3}$"
DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
#: A fully qualified name without its final dot (lower case; ``_`` allowed for SRV names).
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?"
DNS_NAME = rf"^{_LABEL}(\.{_LABEL})*$"  # and at most 253 characters: max_length
#: The name every network resolves to its host's address: the configuration service.
CONFIG_SERVICE_NAME = "lamina.local"
#: VXLAN ids are 24 bits.
VNI_MAX = 2**24 - 1


def bridge_name(network: str) -> str:
    """The bridge of a network on every host: ``lmb`` + the first 12 hex digits of its id."""
    return "lmb" + network.removeprefix("net-")[:12]


def tap_name(mac: str) -> str:
    """The tap device of a guest's NIC: ``lmt`` + its MAC's 12 hex digits (15 characters,
    the kernel's limit)."""
    return "lmt" + mac.replace(":", "")


class DhcpHost(Wire):
    """A guest NIC of this host on the network: DHCP answers it, and only it, with ``ip``."""

    mac: str = Field(pattern=MAC)
    ip: str = Field(max_length=15)
    hostname: str = Field(pattern=DNS_LABEL)
    #: The guest's first network: only that one gives it a default route (nat) and its DNS
    #: server; a secondary network gives it an address only.
    primary: bool = True


class DnsRecord(Wire):
    """One record of a network's zone, as dnsmasq serves it.

    ``value`` by type: A/AAAA an address; CNAME the target name; TXT the text; MX
    ``"<preference> <exchange>"``; SRV ``"<priority> <weight> <port> <target>"``."""

    name: str = Field(pattern=DNS_NAME, max_length=253)
    type: Literal["A", "AAAA", "MX", "CNAME", "TXT", "SRV"]
    value: str = Field(min_length=1, max_length=1024)


class NetworkSpec(Wire):
    network: str = Field(pattern=NETWORK_ID)
    #: The network's name, for logs.
    name: str = Field(pattern=DNS_LABEL)
    #: IPv4 network, e.g. ``10.77.0.0/24``.
    cidr: str = Field(max_length=18)
    #: This host's address on the network (prefix from ``cidr``): put on the bridge; the
    #: guests' DHCP and DNS server, their gateway (nat), and ``lamina.local``.
    address: str = Field(max_length=15)
    #: nat: guests' default route is ``address``, which masquerades their traffic to the
    #: outside; isolated: no route anywhere. Either way no traffic crosses between networks.
    mode: Literal["nat", "isolated"] = "nat"
    #: The zone (``<network>.<cloud domain>``): guests' search domain; dnsmasq answers
    #: names under it from ``records`` only (NXDOMAIN otherwise) and authoritatively.
    domain: str = Field(pattern=DNS_NAME, max_length=253)
    #: 802.1Q tag on the agent's ``network_uplink`` (joins this network's bridges across
    #: hosts); ignored without an uplink.
    vlan: int | None = Field(None, ge=1, le=4094)
    #: This host's guests on the network.
    hosts: list[DhcpHost] = []
    #: The whole zone (every host's guests, groups, MX, records added by hand). The agent
    #: adds ``lamina.local`` -> ``address`` itself.
    records: list[DnsRecord] = []
    #: Servers for names outside Lamina's; empty: the host's resolv.conf on the host's
    #: network, none inside a namespace.
    upstream_dns: list[str] = []
    #: Where the agent relays guests' requests to ``http://lamina.local/guest/...``: the
    #: manager's URL. None: no configuration service on this network.
    config_service_url: str | None = Field(None, max_length=300)
    #: The network's VXLAN id (unique in the cloud): joins its bridges across hosts.
    vni: int | None = Field(None, ge=1, le=VNI_MAX)
    #: This host's underlay (tunnel) address, the VXLAN device's ``local``; None: no tunnel
    #: (the network is on this host only, or the host has no address other hosts reach).
    local: str | None = Field(None, max_length=15)
    #: The underlay addresses of the other hosts that carry the network: the VXLAN
    #: device floods to each (head-end replication). Empty: no VXLAN device.
    peers: list[str] = []
    #: The guests' MTU, sent by DHCP (option 26): the tunnel's 50 bytes below the underlay's.
    mtu: int | None = Field(None, ge=576, le=9000)


class NetworkState(Wire):
    """Everything a host should have of networks; what is not listed is removed."""

    networks: list[NetworkSpec] = []


class NetworkInfo(Wire):
    network: str
    bridge: str
    #: The network namespace its bridge and dnsmasq live in; "" for the host's own.
    namespace: str
    address: str
    #: dnsmasq's pid, None if it is not running.
    dnsmasq_pid: int | None = None
    #: host:port the configuration-service relay listens on, None if none.
    relay: str | None = None
    #: The VLAN device joining the bridge to the uplink, None if none.
    vlan_device: str | None = None
    #: The VXLAN device joining the bridge to the other hosts of the network, None if none,
    #: and the peers it floods to.
    vxlan_device: str | None = None
    peers: list[str] = []


class GuestNic(Wire):
    network: str = Field(pattern=NETWORK_ID)
    mac: str = Field(pattern=MAC)


class PortForward(Wire):
    """Publish a guest's TCP port on the host (like LXD's proxy devices, ``docker -p``)."""

    #: The host address to listen on (an IP literal).
    bind: str = Field("127.0.0.1", max_length=45)
    #: 0: the agent picks a free port and answers it.
    host_port: int = Field(0, ge=0, le=65535)
    network: str = Field(pattern=NETWORK_ID)
    guest_ip: str = Field(max_length=15)
    guest_port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp"] = "tcp"


class ForwardInfo(PortForward):
    forward: str
    #: The interface the agent added ``bind`` to (a floating address: one of the
    #: data-centre network's, not the host's own; removed with the forward), else None.
    floating: str | None = None


# -- live migration (docs/migration.md) ----------------------------------------------------


class MigrationDisk(Wire):
    """A disk of a guest that moves with it (the instance layer, the config disk, a qcow2
    overlay): its name (``disk_create``), device and virtual size."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    target: str = Field(pattern=r"^vd[a-z]$")
    size_bytes: int = Field(ge=0)
    format: Literal["qcow2", "raw"] = "raw"
    #: A qcow2 overlay's backing image (a digest in the destination's cache).
    backing: str | None = Field(None, pattern=DIGEST)
    #: Read-only (the config disk): the hypervisor cannot copy it; the destination makes it
    #: again from ``files`` (its tar archive's files), which the manager gives.
    readonly: bool = False
    files: dict[str, str] | None = None


class MigrationSource(Wire):
    """What the source tells of a running guest about to move: its migratable definition
    and the disks that are its own (not layers, not volumes)."""

    xml: str
    disks: list[MigrationDisk] = []


class IncomingPrepare(Wire):
    """The destination makes room for a guest: the definition it would give it
    (``GuestDefinition``: its paths come from that), the source's migratable XML, and the
    disks to create empty with the same size (none with ``shared`` storage)."""

    definition: GuestDefinition
    xml: str
    disks: list[MigrationDisk] = []
    shared: bool = False


class IncomingPrepared(Wire):
    #: The source's XML with this host's paths: what the guest is defined with here.
    xml: str
    #: The devices the source copies (``migrate_disks``); empty with shared storage.
    copy_disks: list[str] = []


class IncomingStatus(Wire):
    """A guest on a migration's destination: ``incoming`` (paused, waiting for its state)
    or ``arrived`` (a guest of this host, in ``state``)."""

    presence: Literal["incoming", "arrived"]
    state: str


class MigrationStart(Wire):
    """The source moves a running guest to ``dest_uri`` (an agent thread runs it)."""

    dest_uri: str = Field(max_length=300)
    #: QEMU's stream: ``tcp://ADDR``; None: libvirt's choice from the destination's name.
    migrate_uri: str | None = Field(None, max_length=300)
    xml: str
    copy_disks: list[str] = []
    tls: bool = False
    max_downtime_ms: int = Field(300, ge=1, le=60000)
    auto_converge: bool = True
    #: Leave the guest paused there (a stopped guest is moved started paused).
    paused: bool = False


class MigrationTune(Wire):
    max_downtime_ms: int = Field(ge=1, le=60000)


class MigrationStatus(Wire):
    """A guest's migration as this host sees it. ``state``: ``none`` (none known),
    ``running``, ``completed`` (the guest left this host), ``failed``, ``cancelled``
    (aborted: the guest still runs here). Bytes from the hypervisor's job statistics."""

    state: Literal["none", "running", "completed", "failed", "cancelled"]
    error: str | None = None
    elapsed_ms: int = 0
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    disk_total: int = 0
    disk_processed: int = 0
    disk_remaining: int = 0
    dirty_rate: int = 0
    iteration: int = 0
    max_downtime_ms: int | None = None
    #: The guest's pause at the switch (the destination's record of a completed one).
    downtime_ms: int | None = None


GuestDefinition.model_rebuild()  # its nics refer to GuestNic, defined below it
IncomingPrepare.model_rebuild()
GuestRestore.model_rebuild()


#: Volume servers name their iSCSI targets ``<IQN_PREFIX><volume id>``.
IQN_PREFIX = "iqn.2026-11.lamina:"


def split_token(token: str) -> tuple[str, str]:
    """An enrolment token: ``<secret>.<SHA-256 fingerprint of the manager's CA>``."""
    secret, _, ca_fp = token.strip().rpartition(".")
    if not secret or len(ca_fp) != 64:
        raise InvalidRequest("malformed enrolment token: expected <secret>.<CA fingerprint>")
    return secret, ca_fp
