"""The guides' examples run as printed, against `xiaohe-identity serve`.

Every Python block of `docs/integrator-guide.md` and `docs/operator-guide.md` is
extracted. A script (one with a `__main__` guard) runs as a subprocess, the way the
guide tells a reader to run it, pointed at a served instance through `XIAOHE_TARGET`
and `XIAOHE_IDENTITY_DATA_DIR`; it must exit 0 and print what the guide says it
prints. A library module (integrator §6) must import and define its classes;
fragments (integrator §2–§4) are not run. The server waives the code cooldown and
raises the per-destination and per-IP code limits (every script runs from one
address) so the scripts need not wait them out; nothing else differs from `make serve`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI, ServedProcess, start_serve

DOCS = Path(__file__).resolve().parents[2] / "docs"
GUIDE = DOCS / "integrator-guide.md"
OPERATOR_GUIDE = DOCS / "operator-guide.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
SECTION = re.compile(r"^## (\d+)\. ", re.M)
SAVE_AS = re.compile(r"[Ss]ave (?:it )?as `(\w+\.py)`")

EXPECTED: dict[tuple[str, str], list[str]] = {
    ("integrator-guide", "5"): [
        "registered ",
        "remote: valid True",
        "after logout, remote valid: False",
    ],
    ("integrator-guide", "7"): [
        "next step: NEXT_STEP_CONSENT_REQUIRED",
        "restricted session: CONSENT_REQUIRED",
        "business systems see valid = False",
        "valid now: True",
    ],
    ("integrator-guide", "8"): [
        "other sessions ended: 1",
        "phone app valid: False",
        "refused: TICKET_INVALID",
    ],
    ("integrator-guide", "12"): [
        "old session valid: False",
        "next step: NEXT_STEP_PHONE_REVERIFY_REQUIRED",
        "restricted session: ",
        "phone bound: 137****",
        "next step: NEXT_STEP_NONE",
    ],
    ("integrator-guide", "13"): [
        "consent needed first",
        "uploaded: image/png",
        "state: REAL_NAME_STATE_VERIFIED",
        "verified name: 张*",
        "level after refresh: 1",
    ],
    ("integrator-guide", "14"): [
        "QR code PNG: True",
        "recovery codes: 10",
        "next step: NEXT_STEP_MFA_REQUIRED",
        "wrong code: INVALID_CREDENTIALS",
        "auth methods: ['pwd', 'otp']",
        "password-only session meets otp: False",
        "after disabling, next step: NEXT_STEP_NONE",
    ],
    ("integrator-guide", "15"): [
        "reviewer next step: NEXT_STEP_MFA_REQUIRED",
        "case opened: True",
        "in the queue: True",
        "new phone masked: True",
        "login name matches: True",
        "scan: image/png",
        "decision: CASE_STATE_APPROVED",
        "new phone signs in: True",
    ],
    ("integrator-guide", "16"): [
        "login name matches: True",
        "phone: 139****",
        "refused field: field:id_number",
        "no purpose: ['purpose']",
        "disclosed: ['login_name', 'phone'] for order_fulfilment to shop-",
    ],
    # -- issue 14: rights requests --
    ("integrator-guide", "19"): [
        "filed: RIGHTS_REQUEST_KIND_DELETION",
        "due by the end of: 20",
        "in the queue: True",
        "refusal without a reason: ['note']",
        "outcome: RIGHTS_REQUEST_OUTCOME_FULFILLED",
        "note: 已删除",
    ],
    # -- end rights requests --
    ("operator-guide", "2"): [
        "recorded 1, duplicates 0",
        "recorded 0, duplicates 1",
        "purpose: REGISTER provider: file",
        "receipt: delivered DELIVRD",
    ],
    ("operator-guide", "4"): [
        "code 21 refused as ['code.issue.destination']",
        "blocked: conversion, 20 sent, 0 verified",
        "lifted: True",
        "codes to the prefix go out again",
    ],
    ("integrator-guide", "20"): [
        "sessions ended: 1",
        "old token valid: False",
        "cancelled by signing in: True",
    ],
    # -- issue 14: consent and export --
    ("integrator-guide", "21"): [
        "schema: xiaohe-export/1",
        "login name matches: True",
        "document: image/png True",
        "consents: [('privacy_policy', 'grant'), ('identity_documents', 'grant'), "
        "('identity_documents', 'withdraw')]",
        "the policy itself: deactivate instead",
    ],
    # -- end consent and export --
}
"""Lines (or their beginnings) each script's output must contain, by guide and section."""


def _blocks(guide: Path = GUIDE) -> list[tuple[str, str, str]]:
    """(section number, file name, code) of every Python block, in the guide's order.

    The file name is the one the guide tells the reader to save the block as (a later
    script may import an earlier one), else `section_<n>.py`.
    """
    text = guide.read_text(encoding="utf-8")
    starts = [(m.start(), m.group(1)) for m in SECTION.finditer(text)]
    found = []
    previous_end = 0
    for match in BLOCK.finditer(text):
        start, section = max((s for s in starts if s[0] < match.start()), default=(0, "0"))
        names = SAVE_AS.findall(text, max(start, previous_end), match.start())
        name = names[-1] if names else f"section_{section}.py"
        found.append((section, name, match.group(1)))
        previous_end = match.end()
    return found


SCRIPTS = [block for block in _blocks() if '__name__ == "__main__"' in block[2]]
OPERATOR_SCRIPTS = [b for b in _blocks(OPERATOR_GUIDE) if '__name__ == "__main__"' in b[2]]
LIBRARIES = [b for b in _blocks() if b not in SCRIPTS and b[2].startswith('"""')]
"""Whole modules without a `__main__` guard (§6); the other blocks are fragments."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every script is saved, as a reader saves them side by side."""
    folder = tmp_path_factory.mktemp("scripts")
    for _, name, code in SCRIPTS + OPERATOR_SCRIPTS:
        (folder / name).write_text(code, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    """One server for every example; each example registers its own fresh account."""
    data_dir = tmp_path_factory.mktemp("guide") / "var"
    process = start_serve(
        data_dir,
        XIAOHE_IDENTITY_CODE_COOLDOWN_SECONDS="0",
        XIAOHE_IDENTITY_CODE_PER_DESTINATION_HOUR="100",
        XIAOHE_IDENTITY_CODE_PER_DESTINATION_DAY="100",
        # Every script's codes come from this machine's address.
        XIAOHE_IDENTITY_CODE_PER_IP_HOUR="1000",
    )
    yield process
    process.stop()


def test_the_guide_has_a_script_for_every_flow() -> None:
    sections = {section for section, _, _ in SCRIPTS}
    assert {"5", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"} <= sections
    assert LIBRARIES, "§6's business-system gate is a library block"
    assert {section for section, _, _ in OPERATOR_SCRIPTS} == {"2", "4"}


ALL_SCRIPTS = [("integrator-guide", *b[:2]) for b in SCRIPTS] + [
    ("operator-guide", *b[:2]) for b in OPERATOR_SCRIPTS
]


@pytest.mark.parametrize(("guide", "section", "name"), ALL_SCRIPTS, ids=[b[2] for b in ALL_SCRIPTS])
def test_script_runs_as_printed(
    served: ServedProcess, workdir: Path, guide: str, section: str, name: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
    env.update(
        {
            "XIAOHE_TARGET": served.target,
            "XIAOHE_IDENTITY_DATA_DIR": str(served.data_dir),
            "XIAOHE_CLI": CLI,
        }
    )
    ran = subprocess.run(
        [sys.executable, name],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output[-4000:]
    for expected in EXPECTED.get((guide, section), []):
        assert expected in output, (
            f"{guide} §{section} should print {expected!r}:\n{output[-4000:]}"
        )


@pytest.mark.parametrize(
    ("section", "code"), [(b[0], b[2]) for b in LIBRARIES], ids=[f"§{b[0]}" for b in LIBRARIES]
)
def test_library_block_imports(section: str, code: str) -> None:
    namespace: dict[str, object] = {"__name__": f"guide_section_{section}"}
    exec(compile(code, f"integrator-guide §{section}", "exec"), namespace)  # noqa: S102 - our guide
    defined = [value for value in namespace.values() if isinstance(value, type)]
    assert defined, f"§{section} defines no class"
