"""``lamina.commands.run``: the one function that runs external commands."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

import lamina
from lamina.commands import run
from lamina.errors import CommandFailed, CommandTimeout, Timeout


def test_success_answers_stdout_and_feeds_input() -> None:
    assert run(["echo", "a b"], timeout=5) == "a b\n"
    assert run(["cat"], timeout=5, input="fed\n") == "fed\n"
    # Without input the command's stdin is empty, never the caller's terminal.
    assert run(["cat"], timeout=5) == ""


def test_failure_names_the_command_its_exit_code_and_stderr_tail() -> None:
    script = "for i in $(seq 1 400); do echo line$i >&2; done; echo out; exit 3"
    with pytest.raises(CommandFailed) as caught:
        run(["sh", "-c", script], timeout=5)
    error = caught.value
    assert error.argv == ["sh", "-c", script] and error.details["argv"] == error.argv
    assert error.returncode == 3 and error.details["returncode"] == 3
    assert error.stdout == "out\n" and "line1\n" in error.stderr
    assert error.message.startswith("sh exited with 3: ")
    assert error.message.endswith("line400") and "line1\n" not in error.message  # the tail
    assert len(error.message) < 600


def test_failure_without_stderr_says_what_it_printed() -> None:
    with pytest.raises(CommandFailed, match="exited with 1: on stdout"):
        run(["sh", "-c", "echo on stdout; exit 1"], timeout=5)


def test_other_exit_codes_may_be_expected() -> None:
    assert run(["sh", "-c", "echo fixed; exit 1"], timeout=5, ok=(0, 1)) == "fixed\n"
    with pytest.raises(CommandFailed):
        run(["true"], timeout=5, ok=(1,))


def test_stderr_may_follow_stdout() -> None:
    script = "echo out; echo err >&2; exit 1"
    assert run(["sh", "-c", script], timeout=5, ok=(1,), merge_stderr=True) == "out\nerr\n"
    with pytest.raises(CommandFailed, match="exited with 1: out\nerr$"):
        run(["sh", "-c", script], timeout=5, merge_stderr=True)


def test_a_missing_program_is_command_failed() -> None:
    with pytest.raises(CommandFailed, match="cannot run /nonexistent/program") as caught:
        run(["/nonexistent/program"], timeout=5)
    assert caught.value.returncode == 127


def test_timeout_kills_the_command_and_is_typed() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        run(["sh", "-c", "echo waiting >&2; exec sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 10
    error = caught.value
    assert isinstance(error, Timeout) and error.code == "timeout" and error.status == 504
    assert error.argv[0] == "sh" and error.timeout == 0.5
    assert error.message.startswith("sh did not finish within 0.5s")


def test_never_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # Shell syntax in an argument is just text.
    text = f"$(touch {marker}); `touch {marker}` | touch {marker}"
    assert run(["echo", text], timeout=5) == text + "\n"
    assert not marker.exists()
    # A whole command line as one string is a program name that does not exist.
    with pytest.raises(CommandFailed) as caught:
        run([f"touch {marker}"], timeout=5)
    assert caught.value.returncode == 127 and not marker.exists()
    with pytest.raises(ValueError):
        run([], timeout=5)


def test_nothing_else_in_lamina_starts_processes() -> None:
    """Every external command goes through ``lamina.commands``: no other module of the
    package imports ``subprocess`` or calls ``os.system``/``os.popen``/``os.exec*``/``os.spawn*`` or
    ``asyncio.create_subprocess_*``."""
    root = Path(lamina.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "commands.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "os" and (
                    node.attr in ("system", "popen") or node.attr.startswith(("exec", "spawn"))
                ):
                    names = [f"os.{node.attr}"]
                elif node.value.id == "asyncio" and node.attr.startswith("create_subprocess"):
                    names = [f"asyncio.{node.attr}"]
            if any(n == "subprocess" or n.startswith(("os.", "asyncio.")) for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
