"""Map every line of the security checklist to the tests that prove it: docs/security.md.

A test proves a line when its docstring starts with the line's tag: `B3: ...`,
`[I7] ...` or `C1, C4: ...` (or names it as `SECURITY T1`). The identifier
test vectors have no tag; the tests of each checker prove them (`IDENTIFIER_VECTORS`).
Lines that no issue has built yet are listed in `NOT_YET_BUILT` with the issue that
builds them, and lines built in part in `PARTLY_BUILT` with what is missing; a line
there that gains a test, or a line with neither tests nor a listing, fails the check.

    python scripts/security_map.py            # rewrite docs/security.md
    python scripts/security_map.py --check    # exit 1 if it is out of date or incomplete

The checklist's statements are kept in docs/security.md itself, so the check runs
without the design folder; when `../shared/design/SECURITY.md` is there, it is the
source and the rows must match it.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "security.md"
CHECKLIST = ROOT.parent / "shared" / "design" / "SECURITY.md"
TESTS = ROOT / "tests"

NOT_YET_BUILT: dict[str, str] = {}

PARTLY_BUILT: dict[str, str] = {
    "I5": "removing the consent and rights-request rows that still name a deactivated "
    "account's random id (they hold no personal data; ended sessions and disclosures go with "
    "the retention sweep); deactivation ending every session at once and crypto-shredding "
    "its data, backup copies included, are proved",
}

IDENTIFIER_VECTORS = {
    "USCC": "test_uscc_",
    "Organization code": "test_org_code_",
    "Resident ID": "test_resident_id_",
}

_LINE = re.compile(r"^- ([A-Z]\d+) (.*)$")
_VECTOR = re.compile(r"^- (USCC|Organization code|Resident ID) \((GB [^)]*)\): (.*)$")
_TAGS = r"[A-Z]\d{1,2}(?:\s*,\s*[A-Z]\d{1,2})*"
_LEADING = re.compile(rf"^\[({_TAGS})\]|^({_TAGS})\s*:")
_NAMED = re.compile(rf"SECURITY(?:\.md)?\s+({_TAGS})")


@dataclass
class Line:
    """One statement of the checklist."""

    tag: str
    section: str
    text: str
    tests: list[str] = field(default_factory=list)


def read_checklist(text: str) -> list[Line]:
    """The tagged lines and the identifier vectors of SECURITY.md, in order."""
    lines: list[Line] = []
    section = ""
    for raw in text.splitlines():
        if raw.startswith("## "):
            section = raw[3:].strip()
        elif match := _LINE.match(raw):
            lines.append(Line(match.group(1), section, match.group(2).strip()))
        elif match := _VECTOR.match(raw):
            lines.append(Line(match.group(1), section, f"{match.group(2)}: {match.group(3)}"))
    return lines


def read_rows(text: str) -> list[Line]:
    """The rows of an existing docs/security.md (tag, section, statement)."""
    lines: list[Line] = []
    section = ""
    for raw in text.splitlines():
        if raw.startswith("## "):
            section = raw[3:].strip()
        elif raw.startswith("| ") and not raw.startswith(("| line", "|---")):
            cells = [c.strip() for c in raw.strip("|").split(" | ")]
            if len(cells) >= 2:
                lines.append(Line(cells[0], section, cells[1].replace("\\|", "|")))
    return lines


def _tags(docstring: str) -> set[str]:
    first = docstring.strip().splitlines()[0] if docstring.strip() else ""
    found: set[str] = set()
    if match := _LEADING.match(first):
        found.update(t.strip() for t in (match.group(1) or match.group(2)).split(","))
    for match in _NAMED.finditer(first):
        found.update(t.strip() for t in match.group(1).split(","))
    return found


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _test_functions(tree: ast.Module) -> Iterable[tuple[str, Function]]:
    for node in tree.body:
        if isinstance(node, Function) and node.name.startswith("test_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, Function) and item.name.startswith("test_"):
                    yield f"{node.name}::{item.name}", item


def collect(lines: list[Line], tests_dir: Path = TESTS) -> None:
    """Fill in each line's tests from the test suite's docstrings and names."""
    by_tag = {line.tag: line for line in lines}
    for path in sorted(tests_dir.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relative = path.relative_to(tests_dir.parent).as_posix()
        for name, node in _test_functions(tree):
            test_id = f"{relative}::{name}"
            for tag in _tags(ast.get_docstring(node) or ""):
                if tag in by_tag:
                    by_tag[tag].tests.append(test_id)
            for label, prefix in IDENTIFIER_VECTORS.items():
                if name.split("::")[-1].startswith(prefix) and label in by_tag:
                    by_tag[label].tests.append(test_id)


def render(lines: list[Line]) -> str:
    """docs/security.md for these lines."""
    out = [
        "# Security checklist → tests",
        "",
        "Every line of `SECURITY.md` with the tests that prove it (test ids as pytest",
        "prints them). Generated by `python scripts/security_map.py` from the tests'",
        "docstrings, which start with the line's tag; `make test` fails when this page is",
        "out of date or a line has neither tests nor an issue that will build it.",
        "",
    ]
    section = None
    for i, line in enumerate(lines):
        if line.section != section:
            section = line.section
            out += [f"## {section}", "", "| line | statement | tests |", "|---|---|---|"]
        if line.tests:
            proof = "<br>".join(f"`{t}`" for t in sorted(set(line.tests)))
            if line.tag in PARTLY_BUILT:
                proof += f"<br>still to build: {PARTLY_BUILT[line.tag]}"
        else:
            proof = f"not yet built: {NOT_YET_BUILT.get(line.tag, '**none**')}"
        text = line.text.replace("|", "\\|")
        out.append(f"| {line.tag} | {text} | {proof} |")
        if i == len(lines) - 1 or lines[i + 1].section != section:
            out.append("")
    return "\n".join(out)


def problems(lines: list[Line]) -> list[str]:
    """Lines without proof or promise, and promises already kept."""
    found = []
    for line in lines:
        if not line.tests and line.tag not in NOT_YET_BUILT:
            found.append(f"{line.tag}: no test proves it and no issue is named to build it")
        if line.tests and line.tag in NOT_YET_BUILT:
            found.append(f"{line.tag}: has tests now; move it from NOT_YET_BUILT")
        if not line.tests and line.tag in PARTLY_BUILT:
            found.append(f"{line.tag}: listed as partly built but no test proves any of it")
    return found


def build() -> tuple[str, list[str]]:
    """The page as it should be, and what is wrong with the coverage."""
    if CHECKLIST.exists():
        lines = read_checklist(CHECKLIST.read_text(encoding="utf-8"))
    else:
        lines = read_rows(OUTPUT.read_text(encoding="utf-8"))
    collect(lines)
    return render(lines), problems(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/security.md is stale")
    args = parser.parse_args()
    page, issues = build()
    for issue in issues:
        print(f"security map: {issue}", file=sys.stderr)
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != page:
            print(
                "docs/security.md is out of date: run `python scripts/security_map.py`",
                file=sys.stderr,
            )
            return 1
        return 1 if issues else 0
    OUTPUT.write_text(page, encoding="utf-8")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
