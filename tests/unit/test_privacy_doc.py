"""docs/privacy.md's table of stored data matches the code (issue 14, part 5).

Every SQL table, every Redis key prefix and every kind of the retention sweep
must have a row, and every period given with a setting must be that setting's
default: a new table, key or kind, or a changed default, without its row here
fails this test.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.storage.schema import metadata

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "privacy.md"
SERVER = ROOT / "server" / "xiaohe" / "identity" / "server"

_UNIT_SECONDS = {"day": 86400, "hour": 3600, "second": 1, "minute": 60}
_PERIOD = re.compile(r"(\d+) (day|hour|minute|second)s?\b")
_CODE = re.compile(r"`([^`]+)`")
# A Redis key or channel name in the code: `xh:<name>` or the hash-tagged `{xh:<name>}`.
_REDIS_KEY = re.compile(r"""["'`]((?:\{xh:|xh:)[a-z][a-z-]*)""")


@dataclasses.dataclass(frozen=True)
class Row:
    data: str
    where: str
    kept: str
    setting: str
    sweep: str


def rows() -> list[Row]:
    """The rows of the table under "Every kind of data"."""
    text = DOC.read_text(encoding="utf-8").split("## Every kind of data", 1)[1]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Data", "Where", "Encrypted", "Kept", "Setting", "Sweep"]
    parsed = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        parsed.append(Row(cells[0], cells[1], cells[3], cells[4], cells[5]))
    return parsed


def where_names() -> set[str]:
    return {name for row in rows() for name in _CODE.findall(row.where)}


def test_every_sql_table_has_a_row() -> None:
    """A table added to storage/schema.py needs a row saying how long its data is kept."""
    missing = sorted(set(metadata.tables) - where_names())
    assert not missing, f"docs/privacy.md has no row for table(s) {missing}"


def redis_prefixes() -> set[str]:
    found: set[str] = set()
    for path in SERVER.rglob("*.py"):
        found.update(_REDIS_KEY.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_redis_key_prefix_has_a_row() -> None:
    """A Redis key of a new prefix needs a row; the scan itself must find the known ones."""
    prefixes = redis_prefixes()
    assert {"xh:code", "xh:rl", "{xh:revocation-feed", "xh:revoked"} <= prefixes
    names = where_names()
    missing = sorted(p for p in prefixes if not any(n.startswith(p) for n in names))
    assert not missing, f"docs/privacy.md has no row for Redis key(s) {missing}"


def settings_rows() -> list[Row]:
    return [r for r in rows() if r.setting != "—"]


@pytest.mark.parametrize("row", settings_rows(), ids=lambda r: r.setting.strip("`"))
def test_each_period_is_its_settings_default(row: Row) -> None:
    """The period the table states (its first duration) is the setting's default, in seconds."""
    name = row.setting.strip("`")
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert name in fields, f"{name} is not a setting"
    default = getattr(Settings(), name)
    unit = next(u for u in ("days", "hours", "seconds") if name.endswith(f"_{u}"))
    setting_seconds = default * _UNIT_SECONDS[unit.rstrip("s")]
    match = _PERIOD.search(row.kept)
    assert match is not None, f"no period in {row.kept!r}"
    stated = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    assert stated == setting_seconds, f"{row.data}: {row.kept!r} but {name} = {default}"


def test_the_table_names_the_sweeps_kinds_in_order(tmp_path: Path) -> None:
    """Each kind the container registers has a row, in the order the sweep runs them."""
    settings = Settings(data_dir=tmp_path)
    container = Container(settings, redis_url="redis://127.0.0.1:1")
    documented = [r.sweep.strip("`") for r in rows() if r.sweep != "—"]
    assert documented == list(container.retention.kinds)


def test_the_settings_a_row_names_are_the_retention_settings() -> None:
    """Every `retention_*` period setting is named by a row (none is undocumented)."""
    periods = {
        f.name
        for f in dataclasses.fields(Settings)
        if f.name.startswith("retention_") and f.name.endswith(("_days", "_hours"))
    }
    named = {r.setting.strip("`") for r in rows()}
    assert periods <= named, sorted(periods - named)
