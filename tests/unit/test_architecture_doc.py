"""docs/architecture.md matches the code: every RPC has its path, every package its row."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from xiaohe.identity.server.app import SERVICE_NAMES
from xiaohe.identity.v1 import (
    accounts_pb2,
    admin_pb2,
    auth_pb2,
    carriers_pb2,
    codes_pb2,
    directory_pb2,
    privacy_pb2,
    realname_pb2,
    recovery_pb2,
    review_pb2,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
SERVER = ROOT / "server" / "xiaohe" / "identity" / "server"
_REFERENCE = re.compile(r"`((?:transport|flows|[a-z]+)/[a-z_]+)\.([A-Za-z_]+)(?:\.([A-Za-z_]+))?`")
_DESCRIPTORS = [
    accounts_pb2,
    admin_pb2,
    auth_pb2,
    carriers_pb2,
    codes_pb2,
    directory_pb2,
    privacy_pb2,
    realname_pb2,
    recovery_pb2,
    review_pb2,
]


def _rpcs() -> list[tuple[str, str]]:
    out = []
    for module in _DESCRIPTORS:
        for service in module.DESCRIPTOR.services_by_name.values():
            out.extend((service.name, method.name) for method in service.methods)
    return out


def _path_line(service: str, rpc: str) -> str:
    section = DOC.split(f"### {service}\n", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith(f"- `{rpc}`:")]
    assert len(lines) == 1, f"{service}.{rpc} has no path in docs/architecture.md"
    return lines[0]


def test_every_served_service_is_described() -> None:
    served = {name.rsplit(".", 1)[-1] for name in SERVICE_NAMES}
    assert served == {service for service, _ in _rpcs()}
    for service in served:
        assert f"### {service}\n" in DOC


@pytest.mark.parametrize(("service", "rpc"), _rpcs())
def test_every_rpc_has_a_path_of_at_most_four_hops_that_names_real_code(
    service: str, rpc: str
) -> None:
    line = _path_line(service, rpc)
    assert line.count("→") <= 3  # servicer, then at most three more steps
    references = _REFERENCE.findall(line)
    assert references, line
    first_module, _servicer, first_method = references[0]
    assert first_module.startswith("transport/")
    assert first_method == rpc
    for module, name, attribute in references:
        imported = importlib.import_module("xiaohe.identity.server." + module.replace("/", "."))
        target = getattr(imported, name)
        if attribute:
            assert hasattr(target, attribute), f"{module}.{name}.{attribute}"


def test_every_package_is_in_the_map() -> None:
    packages = sorted(p.name for p in SERVER.iterdir() if (p / "__init__.py").exists())
    for package in packages:
        assert f"| `{package}/` |" in DOC, package
