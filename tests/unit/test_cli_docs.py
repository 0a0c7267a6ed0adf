"""docs/cli.md's reference is the generator's output over the commands' own help
(scripts/cli-docs.py), so the page and ``--help`` cannot drift apart; above it, the tour."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from lamina.launcher import build_cli

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "scripts" / "cli-docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_is_generated_from_the_help() -> None:
    gen = _generator()
    text = (ROOT / "docs" / "cli.md").read_text()
    assert gen.MARKER in text, "docs/cli.md lost its marker line"
    assert text == gen.document(text, gen.render(build_cli())), (
        "docs/cli.md is out of date: run .venv/bin/python scripts/cli-docs.py"
    )


def test_the_reference_has_every_command_with_its_examples() -> None:
    reference = _generator().render(build_cli())
    for heading in ("### `lamina`", "### `lamina whoami`", "#### `lamina profile add`"):
        assert f"\n{heading}\n" in f"\n{reference}"
    assert "```sh\nlamina profile list\nlamina profile add alice" in reference
    assert "- `--access-key TEXT` — The user's access key" in reference


def test_the_page_starts_with_a_tour() -> None:
    head = (ROOT / "docs" / "cli.md").read_text().split(_generator().MARKER)[0]
    tour = head.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    for step in ("lamina whoami", "lamina appliance show", "lamina instance console", "--json"):
        assert step in tour
