"""Where the CLI and the Python client find their keys.

``LAMINA_ACCESS_KEY`` and ``LAMINA_SECRET_KEY`` win; otherwise the TOML file
``$LAMINA_CREDENTIALS`` (default ``~/.config/lamina/credentials``), section ``$LAMINA_PROFILE``
(default ``default``), with the keys ``access_key``, ``secret_key`` and optionally ``url`` and
``ca_file``. The file is written with mode 0600.

``ca_file`` (or ``$LAMINA_CA_FILE``, which wins) is the CA certificate an HTTPS manager's
certificate must chain to; without it the system's trust store decides. Verification is never
skipped.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import ConfigError


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    url: str | None = None
    ca_file: str | None = None


def credentials_path() -> Path:
    explicit = os.environ.get("LAMINA_CREDENTIALS")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "lamina" / "credentials"


def profile_name() -> str:
    return os.environ.get("LAMINA_PROFILE", "default")


def read_profiles(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the credentials file {path}: {exc}") from None
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def load_credentials() -> Credentials | None:
    access, secret = os.environ.get("LAMINA_ACCESS_KEY"), os.environ.get("LAMINA_SECRET_KEY")
    if access and secret:
        return Credentials(
            access, secret, os.environ.get("LAMINA_URL"), os.environ.get("LAMINA_CA_FILE")
        )
    path = credentials_path()
    profile = read_profiles(path).get(profile_name())
    if not profile:
        return None
    try:
        return Credentials(
            profile["access_key"],
            profile["secret_key"],
            profile.get("url"),
            profile.get("ca_file"),
        )
    except KeyError as exc:
        raise ConfigError(f"profile {profile_name()!r} of {path} lacks {exc.args[0]!r}") from None


def write_credentials(path: Path, profile: str, creds: Credentials) -> None:
    """Add or replace one profile, keeping the others."""
    profiles = read_profiles(path)
    profiles[profile] = {k: v for k, v in vars(creds).items() if v is not None}
    lines = []
    for name, values in profiles.items():
        lines.append(f"[{_key(name)}]")
        lines += [f"{_key(k)} = {_quote(v)}" for k, v in values.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else _quote(name)
