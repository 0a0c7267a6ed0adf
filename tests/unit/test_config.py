"""Settings: defaults, the TOML file, environment overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.config import load_settings, public_view
from lamina.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("LAMINA_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_embedded_single_machine_setup(tmp_path: Path) -> None:
    s = load_settings()
    assert s.manager.host == "127.0.0.1" and s.manager.url == "http://127.0.0.1:8775"
    assert s.database_url == f"sqlite:///{tmp_path / 'var' / 'lamina.db'}"
    assert s.agent_dir == tmp_path / "var" / "agent"
    assert s.compute.reserved_memory_mib == 128


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lamina.toml"
    path.write_text('data_dir = "/srv/lamina"\n[manager]\nport = 9000\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("LAMINA_CONFIG", str(path))
    monkeypatch.setenv("LAMINA_MANAGER__PORT", "9100")
    s = load_settings()
    assert s.data_dir == Path("/srv/lamina")
    assert s.manager.host == "0.0.0.0" and s.manager.port == 9100  # the environment wins


def test_lamina_toml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "lamina.toml").write_text("[jobs]\nlease_seconds = 30\n")
    assert load_settings().jobs.lease_seconds == 30


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[manager]\nport = 99999\n", {}, "invalid setting manager.port"),
        (
            "[manager]\nprot = 1\n",
            {},
            "invalid setting manager.prot (file key or $LAMINA_MANAGER__PROT): unknown setting",
        ),
        ("colour = 1\n", {}, "invalid setting colour"),
        ("", {"LAMINA_COMPUTE__HEARTBEAT_INTERVAL": "soon"}, "compute.heartbeat_interval"),
        ('[database]\nurl = "mysql://x"\n', {}, "only sqlite:/// and postgresql://"),
        ('log_level = "LOUD"\n', {}, "invalid setting log_level"),
        ("[manager\n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    toml: str,
    env: dict[str, str],
    message: str,
) -> None:
    (tmp_path / "lamina.toml").write_text(toml)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert message in err.value.message


def test_a_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_CONFIG", "/nonexistent/lamina.toml")
    with pytest.raises(ConfigError, match="not a readable file"):
        load_settings()


def test_public_view_hides_database_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_DATABASE__URL", "postgresql://lamina:s3cret@db/lamina")
    view = public_view(load_settings())
    assert "s3cret" not in str(view)
    assert view["database"]["url"] == "postgresql://lamina:***@db/lamina"
