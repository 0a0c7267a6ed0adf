"""Where the CLI and the Python client find their keys.

``LAMINA_ACCESS_KEY`` and ``LAMINA_SECRET_KEY`` win, both or neither (one without the other
is an error, never a fall back to the file); otherwise the TOML file ``$LAMINA_CREDENTIALS``
(default ``~/.config/lamina/credentials``), section ``$LAMINA_PROFILE`` (default
``default``; a profile named in ``LAMINA_PROFILE`` that the file lacks is an error), with the
keys ``access_key``, ``secret_key`` and optionally ``url`` and ``ca_file``. The file is
written with mode 0600.

``ca_file`` (or ``$LAMINA_CA_FILE``, which wins) is the CA certificate an HTTPS manager's
certificate must chain to; without it the system's trust store decides. Verification is never
skipped.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lamina.errors import ConfigError, InvalidRequest

FIELDS = ("access_key", "secret_key", "url", "ca_file")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    url: str | None = None
    ca_file: str | None = None
    #: Where they came from, for people: "profile 'default' of <file>", "the environment".
    source: str | None = field(default=None, compare=False)

    def values(self) -> dict[str, str]:
        """What a profile holds (``source`` is no part of it)."""
        return {k: v for k in FIELDS if (v := getattr(self, k)) is not None}


def credentials_path() -> Path:
    explicit = os.environ.get("LAMINA_CREDENTIALS")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "lamina" / "credentials"


def profile_name() -> str:
    return os.environ.get("LAMINA_PROFILE") or "default"


def read_profiles(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the credentials file {path}: {exc}") from None
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def check_url(url: str, where: str) -> str:
    """``url`` if it is an http or https URL with a host; else an ``InvalidRequest`` saying
    what to write instead (``127.0.0.1:8775`` -> ``http://127.0.0.1:8775``)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return url
    bare = url.split("://", 1)[-1] if "://" in url else url
    raise InvalidRequest(
        f"{where} {url!r} is no http:// or https:// URL: write http://{bare} "
        f"(or https://{bare} for a manager with TLS)"
    )


def profile_source(name: str, path: Path) -> str:
    return f"profile {name!r} of {path}"


def load_credentials() -> Credentials | None:
    """The keys to sign with: the environment's, else the profile's; None if there are none
    at all. Raises ``ConfigError`` for half-set keys or an unknown ``$LAMINA_PROFILE``."""
    access, secret = os.environ.get("LAMINA_ACCESS_KEY"), os.environ.get("LAMINA_SECRET_KEY")
    if access and secret:
        return Credentials(
            access,
            secret,
            os.environ.get("LAMINA_URL"),
            os.environ.get("LAMINA_CA_FILE"),
            source="the environment (LAMINA_ACCESS_KEY, LAMINA_SECRET_KEY)",
        )
    if access or secret:
        given, missing = (
            ("LAMINA_ACCESS_KEY", "LAMINA_SECRET_KEY")
            if access
            else ("LAMINA_SECRET_KEY", "LAMINA_ACCESS_KEY")
        )
        raise ConfigError(
            f"{given} is set but {missing} is not: set both, or unset {given} to use "
            f"the credentials file {credentials_path()}"
        )
    path, name = credentials_path(), profile_name()
    profiles = read_profiles(path)
    profile = profiles.get(name)
    if profile is None:
        if os.environ.get("LAMINA_PROFILE"):
            raise ConfigError(f"no profile {name!r} in {path} ({_listing(path, profiles)})")
        return None
    try:
        return Credentials(
            profile["access_key"],
            profile["secret_key"],
            profile.get("url"),
            profile.get("ca_file"),
            source=profile_source(name, path),
        )
    except KeyError as exc:
        raise ConfigError(f"profile {name!r} of {path} lacks {exc.args[0]!r}") from None


def _listing(path: Path, profiles: dict[str, dict[str, str]]) -> str:
    if profiles:
        return "profiles there: " + ", ".join(sorted(profiles))
    return "it has no profile" if path.exists() else "the file does not exist"


def missing_message() -> str:
    """What to tell someone who has no keys at all: where they were looked for, and how to
    get some."""
    path, name = credentials_path(), profile_name()
    profiles = read_profiles(path)
    return (
        f"no credentials: LAMINA_ACCESS_KEY and LAMINA_SECRET_KEY are not set, and {path} "
        f"has no profile {name!r} ({_listing(path, profiles)}). Add one with "
        f"`lamina profile add {name} --access-key KEY` (an administrator's `lamina user add` "
        "prints the command), or on the manager's machine run `lamina user bootstrap`"
    )


def profile_block(name: str, creds: Credentials) -> str:
    """One profile as the credentials file writes it (TOML)."""
    lines = [f"[{_key(name)}]"]
    lines += [f"{_key(k)} = {_quote(v)}" for k, v in creds.values().items()]
    return "\n".join(lines) + "\n"


def write_credentials(path: Path, profile: str, creds: Credentials) -> None:
    """Add or replace one profile, keeping the others; the file is mode 0600."""
    profiles = read_profiles(path)
    profiles[profile] = creds.values()
    blocks = []
    for name, values in profiles.items():
        known = {k: str(values[k]) for k in FIELDS if k in values}
        extra = {k: str(v) for k, v in values.items() if k not in FIELDS}
        lines = [f"[{_key(name)}]"]
        lines += [f"{_key(k)} = {_quote(v)}" for k, v in {**known, **extra}.items()]
        blocks.append("\n".join(lines) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(blocks))
    os.replace(tmp, path)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else _quote(name)
