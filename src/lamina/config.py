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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lamina.errors import ConfigError

ENV_PREFIX = "LAMINA_"
DEFAULT_PATHS = (Path("lamina.toml"), Path("/etc/lamina/lamina.toml"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManagerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8775, ge=1, le=65535)
    #: The URL agents and clients use to reach this manager; derived from host/port if unset.
    public_url: str | None = None
    job_workers: int = Field(4, ge=1, le=64)

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


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


class ComputeSettings(Section):
    heartbeat_interval: float = Field(5.0, gt=0)
    host_down_after: float = Field(20.0, gt=0)
    reserved_memory_mib: int = Field(128, ge=0)
    cpu_allocation_ratio: float = Field(4.0, gt=0)
    memory_allocation_ratio: float = Field(1.0, gt=0)


class AgentSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8776, ge=1, le=65535)
    hypervisor: str = "libvirt"
    libvirt_uri: str = "qemu:///system"
    #: "auto" probes KVM and falls back to software emulation ("qemu").
    domain_type: Literal["auto", "kvm", "qemu", "test"] = "auto"
    #: The agent's own files (certificates, layer cache, guest disks); default ``<data_dir>/agent``.
    data_dir: Path | None = None


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
    def agent_dir(self) -> Path:
        return (self.agent.data_dir or self.data_dir / "agent").resolve()


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
    return data


def _mask(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
