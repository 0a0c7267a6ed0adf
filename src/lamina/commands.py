"""The one function that runs external commands, for the manager and the agent alike.

Every command is an argv list (never a shell), always has a timeout, and fails with a typed
error: ``CommandFailed`` names the command, its exit code and the tail of its stderr;
``CommandTimeout`` (a ``Timeout``) names the command and the seconds it was given.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from lamina.errors import CommandFailed, CommandTimeout

log = logging.getLogger(__name__)

#: A process :func:`start` started.
Process = subprocess.Popen[bytes]


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def run(
    argv: Sequence[str],
    timeout: float,
    *,
    input: str | None = None,  # noqa: A002
    ok: Collection[int] = (0,),
    merge_stderr: bool = False,
) -> str:
    """Run ``argv`` (never through a shell) with ``input`` on its standard input (else none);
    answer its standard output (followed by its standard error if ``merge_stderr``).

    Raises ``CommandFailed`` when its exit code is not in ``ok`` or it cannot be started,
    ``CommandTimeout`` when it runs longer than ``timeout`` seconds (it is killed).
    """
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("an empty command")
    log.debug("running %s", args)
    try:
        result = subprocess.run(
            args,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            shell=False,
        )
    except subprocess.TimeoutExpired as exc:
        said = exc.output if merge_stderr else exc.stderr
        raise CommandTimeout(args, timeout, _text(said)) from None
    except OSError as exc:
        raise CommandFailed(args, 127, f"cannot run {args[0]}: {exc.strerror}") from None
    if result.returncode not in ok:
        raise CommandFailed(
            args, result.returncode, result.stderr or result.stdout or "", stdout=result.stdout
        )
    return result.stdout


def start(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None
) -> Process:
    """Start ``argv`` (never through a shell) in the background, in a session of its own,
    with nothing on its standard input and its output appended to ``log`` (else discarded);
    answer the process. For daemons that do not detach themselves (the lab's namespace
    keepers, ``lamina.launcher.nshosts``); what must finish goes through :func:`run`."""
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("an empty command")
    log_file = log.open("ab") if log else None
    try:
        return subprocess.Popen(
            args,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            shell=False,
        )
    except OSError as exc:
        raise CommandFailed(args, 127, f"cannot run {args[0]}: {exc.strerror}") from None
    finally:
        if log_file:
            log_file.close()
