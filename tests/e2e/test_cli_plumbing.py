"""The command line's plumbing against a running Lamina: errors as JSON and in the user's
flags, a reader of stdout that goes away, identity that is never ambiguous, profiles, and
the list/show verbs of user, audit, reconcile and host."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest
from harness import LAMINA, ROOT, Cloud

pytestmark = pytest.mark.e2e


def run(
    cloud: Cloud, *args: str, drop: tuple[str, ...] = (), stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    """``lamina ARGS`` with the cloud's environment, less ``drop``, plus ``env``."""
    base = {k: v for k, v in cloud.base_env.items() if k not in drop}
    return subprocess.run(
        LAMINA + list(args),
        input=stdin,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.stdout == ""
    body = json.loads(result.stderr)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return dict(body["error"])


def test_errors_under_json_are_json_with_the_same_exit_codes(cloud: Cloud) -> None:
    missing = cloud.cli("--json", "instance", "show", "nope", check=False)
    assert missing.returncode == 1
    error = json_error(missing)
    assert error["code"] == "not_found" and error["message"] == "instance 'nope' does not exist"
    bad = cloud.cli("instance", "create", "Bad_Name", "--kernel", "/k", "--json", check=False)
    assert bad.returncode == 2 and json_error(bad)["code"] == "invalid_request"
    usage = cloud.cli("--json", "host", "show", check=False)
    assert usage.returncode == 2 and json_error(usage)["code"] == "usage_error"
    # And the text form is as it was: one line.
    text = cloud.cli("instance", "show", "nope", check=False)
    assert (text.returncode, text.stderr) == (1, "error: instance 'nope' does not exist\n")


def test_errors_name_the_flag_the_user_typed(cloud: Cloud, kernel: str) -> None:
    cloud.cli("instance", "create", "web", "--kernel", kernel, "--memory", "64")
    port = cloud.cli("instance", "expose", "web", "--port", "99999", check=False)
    assert port.returncode == 2, port.stderr
    assert "--port" in port.stderr and "guest_port" not in port.stderr
    as_json = cloud.cli("--json", "instance", "expose", "web", "--port", "99999", check=False)
    assert as_json.returncode == 2 and json_error(as_json)["code"] == "usage_error"
    # What only the manager checks comes back in the user's flags too.
    long = "x" * 5000
    api = cloud.cli("--json", "instance", "create", "w2", "--kernel", kernel, "--cmdline", long,
                    check=False)  # fmt: skip
    assert api.returncode == 2, api.stderr
    details = json_error(api)["details"]
    assert details["fields"][0]["field"] == "--cmdline"
    assert details["fields"][0]["api_field"] == "cmdline"
    text = cloud.cli("instance", "create", "w2", "--kernel", kernel, "--cmdline", long, check=False)
    assert text.stderr.startswith("error: --cmdline: String should have at most 4096")
    since = cloud.cli("audit", "list", "--since", "yesterday", check=False)
    assert since.returncode == 2 and since.stderr.startswith("error: --since: expected")


def test_a_reader_that_goes_away_ends_the_command_quietly(cloud: Cloud, kernel: str) -> None:
    """``lamina job list | head -1``: exit 0, no message, no traceback."""
    cloud.cli("instance", "create", "piped", "--kernel", kernel, "--memory", "64")
    for args in (["job", "list"], ["--help"], ["instance", "list", "--json"]):
        read, write = os.pipe()
        os.close(read)
        try:
            done = subprocess.run(
                LAMINA + args, stdout=write, stderr=subprocess.PIPE, env=cloud.base_env,
                cwd=ROOT, timeout=120,
            )  # fmt: skip
        finally:
            os.close(write)
        assert (done.returncode, done.stderr) == (0, b""), args


def test_half_set_keys_are_an_error_naming_what_is_missing(cloud: Cloud) -> None:
    access, secret = cloud.keys()
    half = run(cloud, "whoami", LAMINA_ACCESS_KEY=access)
    assert half.returncode == 1 and "admin" not in half.stdout
    assert half.stderr.startswith("error: LAMINA_ACCESS_KEY is set but LAMINA_SECRET_KEY is not")
    other = run(cloud, "whoami", LAMINA_SECRET_KEY=secret)
    assert other.returncode == 1
    assert "LAMINA_SECRET_KEY is set but LAMINA_ACCESS_KEY is not" in other.stderr
    both = run(cloud, "--json", "whoami", LAMINA_ACCESS_KEY=access, LAMINA_SECRET_KEY=secret)
    assert "environment" in json.loads(both.stdout)["credentials"]


def test_an_unknown_profile_is_named_and_no_keys_say_where_we_looked(cloud: Cloud) -> None:
    bob = run(cloud, "instance", "list", LAMINA_PROFILE="bob")
    assert bob.returncode == 1
    assert bob.stderr == (
        f"error: no profile 'bob' in {cloud.credentials} (profiles there: default)\n"
    )
    nowhere = cloud.root / "no-such-credentials"
    none = run(cloud, "instance", "list", LAMINA_CREDENTIALS=str(nowhere))
    assert none.returncode == 1
    assert str(nowhere) in none.stderr and "lamina profile add" in none.stderr
    assert "sign the request" not in none.stderr


def test_a_new_user_pastes_their_profile_and_is_themselves(cloud: Cloud) -> None:
    out = cloud.cli("user", "add", "alice", "--email", "alice@example.org").stdout
    block = out.split("credentials:\n\n", 1)[1].split("\n\n", 1)[0]
    assert block.startswith('[alice]\naccess_key = "alice"\nsecret_key = ')
    assert f'url = "{cloud.url}"' in block
    # Pasted into their own file, the block is their profile.
    theirs = cloud.root / "alice-credentials"
    theirs.write_text(block + "\n")
    me = json.loads(
        run(cloud, "--json", "whoami", drop=("LAMINA_URL",), LAMINA_CREDENTIALS=str(theirs),
            LAMINA_PROFILE="alice").stdout
    )  # fmt: skip
    assert me["access_key"] == "alice" and me["credentials"] == f"profile 'alice' of {theirs}"
    # The command line it prints writes the same profile into another file.
    line = next(x for x in out.splitlines() if x.strip().startswith("lamina profile add"))
    assert "secret" not in line  # no secret in a command line (shell history): it is asked
    secret = block.split('secret_key = "', 1)[1].split('"', 1)[0]
    other = cloud.root / "other-credentials"
    added = run(cloud, *shlex.split(line)[1:], LAMINA_CREDENTIALS=str(other), stdin=secret)
    assert added.returncode == 0, added.stderr
    assert other.read_text().strip() == block.strip()
    assert oct(other.stat().st_mode & 0o777) == "0o600"
    listed = run(cloud, "profile", "list", LAMINA_CREDENTIALS=str(other)).stdout
    assert "alice" in listed and "secret" not in listed.lower().replace("secret_key", "")
    shown = cloud.cli("whoami").stdout
    assert f"profile 'default' of {cloud.credentials}" in shown


def test_config_show_says_refused_to_a_member_and_unreachable_only_when_so(
    cloud: Cloud,
) -> None:
    out = cloud.cli("--json", "user", "add", "bob", "--email", "bob@example.org").stdout
    secret = json.loads(out)["key"]["secret"]
    member = run(cloud, "config", "show", LAMINA_ACCESS_KEY="bob", LAMINA_SECRET_KEY=secret)
    assert member.returncode == 0, member.stderr
    assert "refused (only administrators may read the server's settings)" in member.stdout
    assert "unreachable" not in member.stdout
    gone = cloud.cli("--url", "http://127.0.0.1:9", "config", "show").stdout
    assert "server         unreachable (cannot reach the Lamina manager" in gone


def test_a_url_without_its_scheme_says_what_to_write(cloud: Cloud) -> None:
    bare = cloud.url.removeprefix("http://")
    flag = cloud.cli("--url", bare, "instance", "list", check=False)
    assert flag.returncode == 2 and f"write http://{bare}" in flag.stderr
    env = run(cloud, "instance", "list", LAMINA_URL=bare)
    assert env.returncode == 2 and env.stderr.startswith(f"error: LAMINA_URL '{bare}'")


def test_user_audit_reconcile_and_host_list_and_show(cloud: Cloud) -> None:
    cloud.cli("user", "add", "carol", "--email", "carol@example.org")
    assert "carol" in cloud.cli("user", "list").stdout
    shown = cloud.cli("user", "show", "carol").stdout
    assert shown == cloud.cli("user", "get", "carol").stdout  # the older verb
    assert "yes" in shown and "True" not in shown  # the key's `active`
    assert "yes" in cloud.cli("user", "key", "list", "carol").stdout
    key_id = json.loads(cloud.cli("--json", "user", "key", "list", "carol").stdout)[0]["id"]
    assert json.loads(cloud.cli("--json", "user", "key", "show", "carol", str(key_id)).stdout)[
        "active"
    ]
    events = json.loads(cloud.cli("--json", "audit", "list", "--limit", "1").stdout)
    event = json.loads(cloud.cli("--json", "audit", "show", str(events[0]["id"])).stdout)
    assert event == events[0]
    assert cloud.cli("audit", "show", "999999", check=False).returncode == 1
    assert "no differences" in cloud.cli("reconcile", "list").stdout
    assert "no differences" in cloud.cli("reconcile").stdout
    assert json.loads(cloud.cli("--json", "reconcile", "list").stdout) == []
    gone = cloud.cli("reconcile", "show", "nope", check=False)
    assert gone.returncode == 1 and "no difference 'nope'" in gone.stderr
    assert cloud.cli("reconcile", "fix", check=False).returncode == 2
    assert json.loads(cloud.cli("--json", "host", "show", "h1").stdout)["name"] == "h1"
    assert "h1" in cloud.cli("host", "list").stdout
