"""The reference docs name every setting, CLI command and option, error code and REST route.

Each failure says what to add to which page. (Datasette's ``test_docs.py``.)
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from pydantic import BaseModel

import lamina
from lamina import errors, httperrors
from lamina.config import ENV_PREFIX, Settings, load_settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: Codes the HTTP layer itself answers with (``lamina.httperrors``), with their status.
HTTP_LAYER_CODES = {
    "invalid_request": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "http_error": None,  # any other HTTP status raised by the framework
    "internal_error": 500,
}


def _read(name: str) -> str:
    path = DOCS / name
    assert path.is_file(), f"docs/{name} is missing"
    return path.read_text()


def _sections(markdown: str) -> dict[str, str]:
    """Each heading's first code span -> the text up to the next heading."""
    found: dict[str, str] = {}
    parts = re.split(r"^(#{1,6} .*)$", markdown, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        match = re.search(r"`([^`]+)`", heading)
        if match:
            found[match.group(1)] = body
    return found


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


# -- settings --------------------------------------------------------------------------------


def _models(annotation: Any) -> list[type[BaseModel]]:
    candidates = [annotation, *typing.get_args(annotation)]
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


def _settings(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(dotted key, environment variable) of every leaf setting."""
    for name, field in model.model_fields.items():
        key = (*path, name)
        nested = _models(field.annotation)
        if nested:
            for sub in nested:
                yield from _settings(sub, key)
        else:
            yield ".".join(key), ENV_PREFIX + "__".join(key).upper()


def test_every_setting_is_documented() -> None:
    text = _read("configuration.md")
    leaves = list(_settings(Settings))
    assert len(leaves) > 10, "the settings walk found too little; is Settings still nested?"
    missing = [
        f"setting {key}: document `{key}` and `{env}` in docs/configuration.md"
        for key, env in leaves
        if f"`{key}`" not in text or not _mentions(text, env)
    ]
    assert not missing, "\n".join(missing)


# -- command line ----------------------------------------------------------------------------


def _cli() -> click.Group:
    """The ``lamina`` group as the console command builds it: the client's commands and the
    launcher's."""
    from lamina.launcher import build_cli

    return build_cli()


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)  # commands load on first use: ask for each one
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{path} {name} is listed but cannot be loaded"
            yield from _commands(sub, f"{path} {name}")


def test_every_cli_command_and_option_is_documented() -> None:
    sections = _sections(_read("cli.md"))
    commands = list(_commands(_cli(), "lamina"))
    assert any(path == "lamina job list" for path, _ in commands)
    missing = []
    for path, command in commands:
        body = sections.get(path)
        if body is None:
            missing.append(f"command {path}: add a section headed `{path}` to docs/cli.md")
            continue
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            for opt in (*param.opts, *param.secondary_opts):
                if not _mentions(body, opt):
                    missing.append(
                        f"option {opt} of {path}: mention `{opt}` in the `{path}` section "
                        "of docs/cli.md"
                    )
    assert not missing, "\n".join(missing)


# -- errors ----------------------------------------------------------------------------------


def _error_classes(cls: type[errors.LaminaError]) -> Iterator[type[errors.LaminaError]]:
    """Every error class of Lamina, wherever a domain declares it (all modules imported)."""
    for module in pkgutil.walk_packages(lamina.__path__, "lamina."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    seen: set[type[errors.LaminaError]] = set()
    todo = [cls]
    while todo:
        current = todo.pop(0)  # parents first: their code and status count
        # The client's own errors (a download that fails its checksum) never cross the API.
        if current in seen or not current.__module__.startswith("lamina."):
            continue
        if current.__module__.startswith("lamina.client"):
            seen.add(current)
            continue
        seen.add(current)
        yield current
        todo.extend(current.__subclasses__())


def test_every_error_code_is_documented_with_its_status() -> None:
    text = _read("api.md")
    rows = [line for line in text.splitlines() if line.lstrip().startswith("|")]
    source = inspect.getsource(httperrors)
    codes: dict[str, int | None] = {}
    for cls in _error_classes(errors.LaminaError):
        codes.setdefault(cls.code, cls.status)
    for code, status in HTTP_LAYER_CODES.items():
        assert f'"{code}"' in source, f"lamina.httperrors no longer answers {code!r}: update me"
        codes.setdefault(code, status)
    missing = []
    for code, status in sorted(codes.items()):
        found = [r for r in rows if f"`{code}`" in r]
        if not found:
            missing.append(f"error code {code}: add a table row with `{code}` to docs/api.md")
        elif status is not None and not any(_mentions(r, str(status)) for r in found):
            missing.append(f"error code {code}: its row in docs/api.md must give status {status}")
    assert not missing, "\n".join(missing)


# -- REST API --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from lamina.api.app import create_app
    from lamina.manager import build_services

    tmp = tmp_path_factory.mktemp("docs")
    empty = tmp / "lamina.toml"
    empty.write_text("")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(ENV_PREFIX):
                mp.delenv(key)
        svc = build_services(load_settings(empty, data_dir=tmp / "var"))
    try:
        yield create_app(svc, background=False).openapi()
    finally:
        svc.close()


def _operations(spec: dict[str, Any]) -> list[str]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return sorted(
        f"{method.upper()} {path}"
        for path, ops in spec["paths"].items()
        for method in ops
        if method in methods
    )


def test_every_rest_route_is_documented(openapi: dict[str, Any]) -> None:
    text = _read("api.md")
    operations = _operations(openapi)
    assert "GET /jobs" in operations
    missing = [
        f"route {op}: document `{op}` in docs/api.md" for op in operations if f"`{op}`" not in text
    ]
    assert not missing, "\n".join(missing)


def test_every_agent_route_and_procedure_is_documented(tmp_path: Path) -> None:
    from lamina.agent.drivers.fake import FakeHypervisor
    from lamina.agent.server import Agent, create_agent_app
    from lamina.wire.protocol import PROCEDURES

    text = _read("api.md")
    app = create_agent_app(Agent(tmp_path, FakeHypervisor()))
    missing = [
        f"agent route {op}: document `{op}` in the agent section of docs/api.md"
        for op in _operations(app.openapi())
        if f"`{op}`" not in text
    ]
    missing += [
        f"agent procedure {name}: map `{name}` to its route in docs/api.md"
        for name in PROCEDURES
        if f"`{name}`" not in text
    ]
    assert not missing, "\n".join(missing)


def test_no_two_test_files_share_a_name() -> None:
    """pytest imports test files by their basename (no packages under tests/): two with one
    name stop the whole run at collection, which `make check` (unit tests only) would not see."""
    tests = Path(__file__).resolve().parents[1]
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted(tests.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(tests)} and {path.relative_to(tests)}")
        seen.setdefault(path.name, path)
    assert not clashes, f"rename one of: {clashes}"
