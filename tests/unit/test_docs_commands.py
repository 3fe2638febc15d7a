"""Every command line the README and the guides show runs as written from a fresh clone.

`make serve` installs the CLI in `.venv/bin/`, which is not on anybody's PATH: a
bare `xiaohe-identity …` in a guide is "command not found" on the first try. So
each use names `.venv/bin/xiaohe-identity` (or is a `make` target), and names a
command the CLI has. docs/security.md is generated from the checklist and left out.
Two places are not a fresh clone: `kubectl` lines (where `xiaohe-identity` is the
namespace) and the operator guide's production sections (§5–§10), whose commands run
in the image, where the Dockerfile puts the CLI on the PATH.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xiaohe.identity.server.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "security.md"),
]
BARE = re.compile(r"(?<![\w/.-])xiaohe-identity\s+[a-z]")
INSTALLED = re.compile(r"\.venv/bin/xiaohe-identity\s+([a-z][a-z-]*)")


def _commands() -> set[str]:
    parser = _parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return set(subparsers.choices)  # type: ignore[arg-type]


IN_THE_IMAGE = re.compile(r"^## (5|6|7|8|9|10)\. ")
"""Operator-guide sections about running the container image."""


def _clone_lines(doc: Path) -> list[tuple[int, str]]:
    """The lines of `doc` that a reader runs from a clone (see the module docstring)."""
    kept, in_image = [], False
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("## "):
            in_image = doc.name == "operator-guide.md" and bool(IN_THE_IMAGE.match(line))
        if not in_image and "kubectl" not in line:
            kept.append((number, line))
    return kept


def test_the_image_puts_the_cli_on_the_path() -> None:
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ENV PATH=/opt/xiaohe-identity/bin:", dockerfile, re.MULTILINE)


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_cli_use_names_the_installed_command(doc: Path) -> None:
    bare = [
        f"{doc.name}:{number}: {line.strip()}"
        for number, line in _clone_lines(doc)
        if BARE.search(line)
    ]
    assert not bare, "run it as .venv/bin/xiaohe-identity:\n" + "\n".join(bare)


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_cli_use_names_a_command_the_cli_has(doc: Path) -> None:
    used = set(INSTALLED.findall(doc.read_text(encoding="utf-8")))
    assert used <= _commands(), sorted(used - _commands())


def test_the_readme_shows_the_cli_where_make_serve_puts_it() -> None:
    assert INSTALLED.search((ROOT / "README.md").read_text(encoding="utf-8"))
