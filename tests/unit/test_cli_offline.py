"""The CLI's plumbing without a manager: errors (JSON, flag names, broken pipes), where keys
come from, profiles, URLs, output cells and start-up imports."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lamina.cli.flags import api_fields
from lamina.cli.main import in_flags, run
from lamina.cli.output import _cell
from lamina.client import Client
from lamina.client.credentials import (
    Credentials,
    load_credentials,
    missing_message,
    profile_block,
    read_profiles,
    write_credentials,
)
from lamina.errors import ConfigError, InvalidRequest
from lamina.launcher import build_cli

LAMINA = [sys.executable, "-m", "lamina"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A credentials file of our own, and no keys in the environment."""
    for name in ("LAMINA_ACCESS_KEY", "LAMINA_SECRET_KEY", "LAMINA_PROFILE", "LAMINA_URL"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "credentials"
    monkeypatch.setenv("LAMINA_CREDENTIALS", str(path))
    return path


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    return {**env, "LAMINA_CREDENTIALS": str(home), **extra}


# -- errors in the user's flags


@click.command("expose")
@click.option("--port", "guest_port", type=int)
@click.option("--memory", type=int)
@click.argument("name")
@api_fields(memory_mib="--memory")
def _expose(guest_port: int, memory: int, name: str) -> None:
    """A command as the instance group has them."""


def test_api_field_names_become_the_flags_typed() -> None:
    exc = InvalidRequest(
        "guest_port: Input should be less than or equal to 65535; memory_mib: too small; "
        "name: must be lower-case",
        fields=[
            {"field": "guest_port", "message": "Input should be less than or equal to 65535"},
            {"field": "memory_mib", "message": "too small"},
            {"field": "name", "message": "must be lower-case"},
        ],
    )
    message, details = in_flags(exc, _expose)
    assert message == (
        "--port: Input should be less than or equal to 65535; --memory: too small; "
        "NAME: must be lower-case"
    )
    assert [f["field"] for f in details["fields"]] == ["--port", "--memory", "NAME"]
    assert details["fields"][0]["api_field"] == "guest_port"
    # Without the command (an error before any request), the message is left as it came.
    assert in_flags(exc, None)[0] == exc.message
    # Only a field at the head of a part is a field: prose is left alone.
    prose = InvalidRequest("the guest_port: of x is wrong; nics.0.network: unknown")
    assert in_flags(prose, _expose)[0] == prose.message


def test_errors_under_json_are_one_json_object_with_the_same_exit_codes(home: Path) -> None:
    runner = CliRunner()
    usage = runner.invoke(build_cli(), ["--json", "user", "list", "--bogus"])
    assert usage.exit_code == 2
    error = json.loads(usage.stderr)["error"]
    assert error["code"] == "usage_error" and "--bogus" in error["message"]
    assert set(error) == {"code", "message", "details"}
    missing = runner.invoke(build_cli(), ["--json", "profile", "show", "bob"])
    assert missing.exit_code == 1 and missing.stdout == ""
    assert json.loads(missing.stderr)["error"]["code"] == "not_found"
    bad_url = runner.invoke(build_cli(), ["--json", "--url", "127.0.0.1:8775", "whoami"])
    assert bad_url.exit_code == 2
    assert "http://127.0.0.1:8775" in json.loads(bad_url.stderr)["error"]["message"]
    # The text form: the same codes, one line.
    text = runner.invoke(build_cli(), ["--url", "127.0.0.1:8775", "whoami"])
    assert text.exit_code == 2 and text.stderr.startswith("error: --url '127.0.0.1:8775'")
    assert runner.invoke(build_cli(), ["user", "list", "--bogus"]).exit_code == 2


def test_run_accepts_json_anywhere(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(build_cli(), ["profile", "show", "bob", "--json"])
    assert exit_.value.code == 1
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "not_found"


@pytest.mark.parametrize("args", [["--help"], ["profile", "--help"], ["profile", "list"]])
def test_a_reader_that_goes_away_is_no_error(home: Path, args: list[str]) -> None:
    """``lamina --help | head -1``: stdout's reader is gone before we write."""
    write_credentials(home, "default", Credentials("a", "s"))
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            LAMINA + args, stdout=write, stderr=subprocess.PIPE, env=_env(home), timeout=60
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, b"")


# -- identity


def test_half_set_keys_are_an_error_never_the_file(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_credentials(home, "default", Credentials("admin", "s3cret"))
    monkeypatch.setenv("LAMINA_ACCESS_KEY", "alice")
    with pytest.raises(ConfigError, match="LAMINA_SECRET_KEY is not"):
        load_credentials()
    monkeypatch.delenv("LAMINA_ACCESS_KEY")
    monkeypatch.setenv("LAMINA_SECRET_KEY", "x")
    with pytest.raises(ConfigError, match="LAMINA_SECRET_KEY is set but LAMINA_ACCESS_KEY"):
        load_credentials()
    with pytest.raises(ConfigError, match="without secret_key"):
        Client("http://127.0.0.1:1", access_key="alice")
    monkeypatch.setenv("LAMINA_ACCESS_KEY", "alice")
    creds = load_credentials()
    assert creds is not None and creds.access_key == "alice"
    assert creds.source is not None and "environment" in creds.source


def test_an_unknown_profile_is_named_with_those_there(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMINA_PROFILE", "bob")
    with pytest.raises(ConfigError, match="no profile 'bob' in .*the file does not exist"):
        load_credentials()
    write_credentials(home, "default", Credentials("admin", "s"))
    write_credentials(home, "alice", Credentials("alice", "s"))
    with pytest.raises(ConfigError) as exc:
        load_credentials()
    assert exc.value.message == f"no profile 'bob' in {home} (profiles there: alice, default)"
    monkeypatch.setenv("LAMINA_PROFILE", "alice")
    creds = load_credentials()
    assert creds is not None and creds.source == f"profile 'alice' of {home}"


def test_no_credentials_says_where_it_looked_and_what_to_do(home: Path) -> None:
    assert load_credentials() is None  # the Python client may still call /health unsigned
    message = missing_message()
    assert str(home) in message and "LAMINA_ACCESS_KEY" in message
    assert "lamina profile add default" in message


def test_profiles_are_written_listed_and_shown_without_secrets(home: Path) -> None:
    write_credentials(home, "default", Credentials("admin", "adminsecret"))
    runner = CliRunner(env=_env(home))
    added = runner.invoke(
        build_cli(),
        ["profile", "add", "alice", "--access-key", "alice", "--url", "http://h:8775"],
        input="alicesecret\n",
    )
    assert added.exit_code == 0, added.output
    assert "alicesecret" not in added.output  # the prompt does not echo it
    assert stat.S_IMODE(home.stat().st_mode) == 0o600
    profiles = read_profiles(home)
    assert profiles["alice"] == {
        "access_key": "alice",
        "secret_key": "alicesecret",
        "url": "http://h:8775",
    }
    assert profiles["default"]["secret_key"] == "adminsecret"  # the others are kept
    listed = runner.invoke(build_cli(), ["profile", "list"]).stdout
    assert "alice" in listed and "http://h:8775" in listed and "secret" not in listed
    shown = json.loads(runner.invoke(build_cli(), ["--json", "profile", "show", "alice"]).stdout)
    assert shown["access_key"] == "alice" and "secret_key" not in shown
    assert shown["current"] is False
    bad = runner.invoke(
        build_cli(), ["profile", "add", "x", "--access-key", "x", "--secret-key", "s", "--url", "h"]
    )
    assert bad.exit_code == 2 and "http://h" in bad.output


def test_a_profile_block_reads_back_as_the_profile(tmp_path: Path) -> None:
    creds = Credentials("alice", 'se"cr\\et', "http://h:1", None, source="ignored")
    path = tmp_path / "c"
    path.write_text(profile_block("alice", creds))
    assert read_profiles(path) == {
        "alice": {"access_key": "alice", "secret_key": 'se"cr\\et', "url": "http://h:1"}
    }


# -- URLs


@pytest.mark.parametrize("url", ["127.0.0.1:8775", "localhost", "ftp://h/"])
def test_a_url_without_http_is_refused_saying_what_to_write(
    home: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    with pytest.raises(InvalidRequest, match="write http://"):
        Client(url, access_key="a", secret_key="s")
    monkeypatch.setenv("LAMINA_URL", url)
    with pytest.raises(InvalidRequest, match="LAMINA_URL"):
        Client(access_key="a", secret_key="s")
    monkeypatch.delenv("LAMINA_URL")
    write_credentials(home, "default", Credentials("a", "s", url))
    with pytest.raises(InvalidRequest, match="of profile 'default'"):
        Client()


# -- output


def test_booleans_print_as_yes_and_no() -> None:
    assert (_cell(True), _cell(False), _cell(None), _cell(1)) == ("yes", "no", "-", "1")


# -- start-up


def _imported(args: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from lamina.cli.main import run\n"
        "from lamina.launcher import build_cli\n"
        "try:\n"
        f"    run(build_cli(), {args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stderr.split())


def test_version_and_help_import_no_http_client_nor_settings() -> None:
    heavy = {"httpx", "pydantic", "pydantic_settings", "lamina.config", "sqlalchemy"}
    version = _imported(["--version"])
    assert not version & heavy
    assert not {m for m in version if m.startswith("lamina.cli.") and m != "lamina.cli.main"} - {
        "lamina.cli.context"
    }
    assert not _imported(["--help"]) & heavy
