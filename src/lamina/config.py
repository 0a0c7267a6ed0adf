"""Settings: one TOML file, every key overridable by an environment variable.

The file is ``$LAMINA_CONFIG``, else ``./lamina.toml``, else ``/etc/lamina/lamina.toml`` (the
first that exists; none is fine: the defaults give the embedded single-machine setup). An
environment variable ``LAMINA_<SECTION>__<KEY>`` (or ``LAMINA_<KEY>`` for top-level keys)
overrides the file. Bad values are refused at start with a message naming the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lamina.errors import ConfigError

ENV_PREFIX = "LAMINA_"
DEFAULT_PATHS = (Path("lamina.toml"), Path("/etc/lamina/lamina.toml"))
TiB = 1024**4


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManagerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8775, ge=1, le=65535)
    #: The URL agents and clients use to reach this manager; derived from host/port if unset.
    public_url: str | None = None
    job_workers: int = Field(4, ge=1, le=64)
    #: Processes serving the API on one port, each a full manager (job runner, monitor) on
    #: the shared database: more than one uses more cores.
    processes: int = Field(1, ge=1, le=64)
    #: HTTPS: "off" (plain HTTP), "ca" (a certificate from Lamina's own CA, made at start) or
    #: "files" (the administrator's ``tls_cert`` and ``tls_key``).
    tls: Literal["off", "ca", "files"] = "off"
    tls_cert: Path | None = Field(None, validate_default=True)
    tls_key: Path | None = Field(None, validate_default=True)
    #: For "files": the CA certificate clients should trust, written by ``lamina user
    #: bootstrap`` to the credentials file; unset, clients use the system's trust store.
    tls_ca_file: Path | None = None
    #: The largest request body read into memory: JSON, forms and signed bodies (whose hash
    #: is checked). Only the image uploads stream bigger bodies, and only once authenticated.
    max_body_bytes: int = Field(2 * 2**20, ge=64 * 1024, le=64 * 2**20)
    #: The request line and headers together; more is refused (431) while they arrive.
    max_header_bytes: int = Field(128 * 1024, ge=16 * 1024, le=2**20)

    @field_validator("tls")
    @classmethod
    def _https_public_url(cls, value: str, info: ValidationInfo) -> str:
        public_url = info.data.get("public_url")
        if value != "off" and public_url and not public_url.startswith("https://"):
            raise ValueError(
                f"manager.tls is {value!r} but manager.public_url ({public_url}) is not "
                "https://: clients would talk plain HTTP to a TLS port"
            )
        return value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _files_need_paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("tls") == "files" and value is None:
            raise ValueError('required when manager.tls is "files"')
        return value

    @property
    def url(self) -> str:
        scheme = "http" if self.tls == "off" else "https"
        # A manager listening on all interfaces is reached locally through the loopback,
        # a name its "ca" certificate carries.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        return self.public_url or f"{scheme}://{host}:{self.port}"


class DatabaseSettings(Section):
    #: SQLAlchemy URL; unset means SQLite at ``<data_dir>/lamina.db``.
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql:// URLs are supported")
        return value


class JobSettings(Section):
    poll_interval: float = Field(0.5, gt=0)
    #: A manager renews its lease on a running job this often; a lease not renewed for
    #: ``lease_seconds`` lets another manager (or this one after a restart) take the job over.
    lease_seconds: float = Field(15.0, gt=0)
    #: ``lamina job list --stuck`` shows jobs with less than this fraction of their time left.
    stuck_fraction: float = Field(0.2, ge=0, le=1)
    #: An undo that failed because a host could not be reached is tried again after this
    #: long, then after twice as long each time, at most ``undo_retry_max_seconds`` apart
    #: (and at once when a host comes back up).
    undo_retry_seconds: float = Field(5.0, gt=0)
    undo_retry_max_seconds: float = Field(300.0, gt=0)


class ReconcileSettings(Section):
    #: A guest or export younger than this (since its creation, by its host's clock) is not
    #: yet an orphan: the job making it may not have recorded it.
    grace_seconds: float = Field(120.0, ge=0)


class ComputeSettings(Section):
    heartbeat_interval: float = Field(5.0, gt=0)
    host_down_after: float = Field(20.0, gt=0)
    reserved_memory_mib: int = Field(128, ge=0)
    cpu_allocation_ratio: float = Field(4.0, gt=0)
    memory_allocation_ratio: float = Field(1.0, gt=0)
    #: How the scheduler chooses among the hosts an instance fits on: ``spread``, the one
    #: with the most free room; ``pack``, the fullest (``lamina.compute.scheduler``).
    scheduler: Literal["spread", "pack"] = "spread"
    #: Folders whose files administrators may boot instances from by host path or
    #: ``file://`` URL (members never may: they boot from images). Empty: no host paths.
    boot_paths: tuple[Path, ...] = ()

    @field_validator("boot_paths")
    @classmethod
    def _absolute(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        return _absolute_folders(value)


class MigrationSettings(Section):
    """Moving instances between hosts (``lamina instance migrate``, docs/migration.md)."""

    #: How libvirt reaches the destination: ``tls`` (``qemu+tls``, the migration URI the
    #: destination's agent reports, certificates from Lamina's CA; the stream over TLS too)
    #: or ``tcp`` (plain ``qemu+tcp``, no authentication: for labs of namespace hosts only).
    transport: Literal["tls", "tcp"] = "tls"
    #: ``copy``: the instance layer (or overlay) moves with the guest by block migration,
    #: the config disk is made again; ``shared``: the hosts' agents keep guests' disks in
    #: one shared folder, nothing is copied.
    storage: Literal["copy", "shared"] = "copy"
    #: Seconds a live migration may run; one that has not converged by then is aborted and
    #: the guest keeps running on its source.
    deadline_seconds: float = Field(300.0, gt=0)
    #: The pause allowed at the switch (ms): at first, and the most the watchdog steps it
    #: up to (in ``downtime_steps`` steps over the first half of the deadline).
    downtime_ms: int = Field(300, ge=1)
    max_downtime_ms: int = Field(2000, ge=1)
    downtime_steps: int = Field(5, ge=0)
    #: QEMU throttles the guest's vCPUs while it dirties memory faster than it is copied.
    auto_converge: bool = True


class IdentitySettings(Section):
    #: Seconds a manager keeps a user's keys in memory; other managers see a revoked key
    #: within this time (changes made through a manager apply there at once). 0: no cache.
    key_cache_seconds: float = Field(2.0, ge=0)
    #: Lifetime of a web session.
    session_hours: float = Field(8.0, gt=0)
    #: Failed logins for one access key before each further attempt must wait.
    lockout_threshold: int = Field(5, ge=1)
    #: The first wait; it doubles with every further failure, up to lockout_max_seconds.
    lockout_seconds: float = Field(30.0, ge=0)
    lockout_max_seconds: float = Field(900.0, ge=0)
    #: Accept VISOR's HMAC-SHA1 signatures, which cover neither the query, the body nor the
    #: headers: only for requests without a body (and without a query but image listings).
    visor_signatures: bool = False


class ImageSettings(Section):
    #: Stores images may be kept in; a write to one not listed is a 400.
    stores: tuple[Literal["file", "s3", "http"], ...] = ("file", "http")
    #: The store of an upload that names none.
    default_store: Literal["file", "s3"] = "file"
    #: Access of an image registered without one: private, like instances and networks
    #: (VISOR made it public; a cloud shared by several users should not publish by default).
    default_access: Literal["public", "private"] = "private"
    #: Root of the file store; default ``<data_dir>/images``.
    file_root: Path | None = None
    #: An S3-compatible service (any, through boto3).
    s3_endpoint: str | None = None
    s3_bucket: str = "lamina-images"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    #: Redirects followed when registering an http location.
    http_max_redirects: int = Field(5, ge=0, le=20)
    #: Whether image locations and boot sources (``http(s)://``) may point at loopback,
    #: private or other non-global addresses: the manager and the hosts fetch them, so
    #: anyone who may register an image could reach internal services. Link-local and
    #: metadata-service addresses are refused even then. Hosts' agents read it too.
    http_allow_private: bool = False
    #: An upload whose writer has made no progress for this long is turned to error.
    stale_upload_seconds: float = Field(120.0, gt=0)
    #: A resumable upload nobody continued for this long is abandoned.
    resumable_upload_hours: float = Field(24.0, gt=0)
    #: The largest image file accepted (uploads, resumable uploads, http locations); larger
    #: ones are refused with 413 ``too_large`` before a byte is stored.
    max_size_bytes: int = Field(TiB, gt=0, le=2**63 - 1)


class VolumeSettings(Section):
    #: The largest volume (new, from a snapshot, or extended) accepted; larger ones are refused
    #: with 413 ``too_large`` before anything is recorded.
    max_size_bytes: int = Field(4 * TiB, gt=0, le=2**63 - 1)


class ChannelSettings(Section):
    #: Minutes between refreshes of every subscribed channel's feed; 0: only on demand.
    refresh_minutes: float = Field(60.0, ge=0)
    #: Seconds to wait for a channel's server (connect and each read).
    timeout_seconds: float = Field(30.0, gt=0)
    #: Whether channel feeds and their files may be fetched from loopback, private or other
    #: non-global addresses (``make up`` serves its sample channel on loopback).
    allow_private: bool = False


class NetworkSettings(Section):
    #: The cloud's DNS domain: an instance on network N is ``<instance>.<N>.<domain>``.
    domain: str = Field(
        "lamina.internal",
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
    )
    #: The network an instance joins when its request names none (if it exists and the
    #: caller may use it); empty: none.
    default_network: str = Field("default", pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$")
    #: DNS servers hosts' dnsmasq forwards other names to; empty: each host's own resolver
    #: (none inside a network namespace).
    upstream_dns: tuple[str, ...] = ()
    #: The guests' MTU, sent by DHCP (option 26): a network that spans hosts carries their
    #: frames in VXLAN, 50 bytes more, so 1450 fits a 1500-byte data-centre network. 0:
    #: none sent (for an underlay with jumbo frames, or guests that must keep 1500).
    guest_mtu: int = Field(1450, ge=0, le=9000)

    @field_validator("upstream_dns")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for address in value:
            ipaddress.ip_address(address)
        return value

    @field_validator("guest_mtu")
    @classmethod
    def _mtu(cls, value: int) -> int:
        if value and value < 576:
            raise ValueError("guest_mtu is 0 (none sent) or 576 to 9000")
        return value


class AgentSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8776, ge=1, le=65535)
    hypervisor: str = "libvirt"
    libvirt_uri: str = "qemu:///system"
    #: "auto" probes KVM and falls back to software emulation ("qemu").
    domain_type: Literal["auto", "kvm", "qemu", "test"] = "auto"
    #: The agent's own files (certificates, layer cache, guest disks); default ``<data_dir>/agent``.
    data_dir: Path | None = None
    #: Whether this agent is a volume server (owns volumes and exports them over iSCSI).
    volumes: bool = True
    #: The volume backend: a pattern file of ``lamina/volumes/patterns/`` (qcow2, raw, lvm, rbd).
    volume_backend: str = Field("qcow2", pattern=r"^[a-z0-9_]+$")
    #: Folder of a file backend's volumes; default ``<agent data_dir>/volumes``.
    volume_root: Path | None = None
    #: host:port of this host's iSCSI portal, as initiators reach it.
    iscsi_portal: str = Field(
        "127.0.0.1:3260", pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$"
    )
    #: The LVM volume group (lvm backend).
    volume_vg: str | None = Field(None, pattern=r"^[A-Za-z0-9_.+][A-Za-z0-9_.+-]*$")
    #: The LVM thin pool (lvm backend) or the Ceph pool (rbd backend).
    volume_pool: str | None = Field(None, pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")
    #: The network namespace of the guests' bridges, dnsmasq and relays (created if
    #: missing); "" for the host's own network.
    network_namespace: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,31})?$")
    #: An interface (in that namespace, or the host's) carrying the 802.1Q VLANs of the
    #: networks that have a VLAN id; "" for none.
    network_uplink: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9_-]{0,9})?$")
    #: This host's underlay address for the VXLAN tunnels of networks that span hosts (other
    #: hosts send to it, UDP 4789); "" for the host part of the address the manager knows
    #: the agent by (``host add --address``).
    tunnel_address: str = Field("", pattern=r"^(\d{1,3}(\.\d{1,3}){3})?$")
    #: Folders whose files the agent may copy into its cache when the manager names a host
    #: path or ``file://`` URL; anything else is refused, whoever asks. Unset: the folders
    #: of ``compute.boot_paths`` (the repository's files come through the manager's blob
    #: route, never by path).
    fetch_roots: tuple[Path, ...] | None = None

    @field_validator("fetch_roots")
    @classmethod
    def _absolute(cls, value: tuple[Path, ...] | None) -> tuple[Path, ...] | None:
        return None if value is None else _absolute_folders(value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Path("var")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    manager: ManagerSettings = ManagerSettings()
    database: DatabaseSettings = DatabaseSettings()
    jobs: JobSettings = JobSettings()
    compute: ComputeSettings = ComputeSettings()
    migration: MigrationSettings = MigrationSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    identity: IdentitySettings = IdentitySettings()
    images: ImageSettings = ImageSettings()
    channels: ChannelSettings = ChannelSettings()
    network: NetworkSettings = NetworkSettings()
    volumes: VolumeSettings = VolumeSettings()
    agent: AgentSettings = AgentSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment must beat them.
        return (env_settings, init_settings)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir.resolve() / 'lamina.db'}"

    @property
    def image_root(self) -> Path:
        return (self.images.file_root or self.data_dir / "images").resolve()

    @property
    def agent_dir(self) -> Path:
        return (self.agent.data_dir or self.data_dir / "agent").resolve()

    @property
    def volume_root(self) -> Path:
        return (self.agent.volume_root or self.agent_dir / "volumes").resolve()

    @property
    def fetch_roots(self) -> tuple[Path, ...]:
        """The folders the agent may read boot files from."""
        if self.agent.fetch_roots is not None:
            return self.agent.fetch_roots
        return self.compute.boot_paths


def _absolute_folders(value: tuple[Path, ...]) -> tuple[Path, ...]:
    for folder in value:
        if not folder.is_absolute():
            raise ValueError(f"{folder} is not an absolute path")
        if folder == Path("/"):
            raise ValueError("/ would allow every file of the host")
    return value


def config_path() -> Path | None:
    """The settings file in force, or None."""
    explicit = os.environ.get("LAMINA_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"LAMINA_CONFIG names {explicit!r}, which is not a readable file")
        return path
    return next((p for p in DEFAULT_PATHS if p.is_file()), None)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read, merge and validate the settings, or raise ``ConfigError`` naming the bad key."""
    path = path or config_path()
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _describe(exc: ValidationError, path: Path | None) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        env = ENV_PREFIX + "__".join(str(part) for part in err["loc"]).upper()
        message = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"invalid setting {key} (file key or ${env}): {message}")
    where = f" (from {path} or the environment)" if path else " (from the environment)"
    return f"bad configuration{where}: " + "; ".join(lines)


def public_view(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with any password in a URL masked."""
    data = settings.model_dump(mode="json")
    data["database"]["url"] = _mask(settings.database_url)
    data["data_dir"] = str(settings.data_dir.resolve())
    data["agent"]["data_dir"] = str(settings.agent_dir)
    data["agent"]["volume_root"] = str(settings.volume_root)
    data["images"]["file_root"] = str(settings.image_root)
    data["agent"]["fetch_roots"] = [str(p) for p in settings.fetch_roots]
    if settings.images.s3_secret_key is not None:
        data["images"]["s3_secret_key"] = "***"
    return data


def _mask(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
