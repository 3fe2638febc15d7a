"""The deployment files under `deploy/`, read as the tools that use them would read them.

Kubernetes manifests are rendered with `kubectl kustomize` (no cluster is contacted),
compose and the Dockerfile are parsed here. Nothing is built or started: the one test
that would build the image (test_dockerfile.py) skips, saying so, without a container
engine.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from xiaohe.identity.server.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
KUSTOMIZATIONS = ("base", "overlays/staging", "overlays/production")

SETTING_NAMES = frozenset(f"{ENV_PREFIX}{f.name.upper()}" for f in dataclasses.fields(Settings))
"""Every environment variable the server reads: one per Settings field (config.py)."""


@cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize deploy/k8s/<kustomization>` renders."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not on PATH: the Kubernetes manifests in deploy/k8s cannot be rendered, "
            "so they are NOT checked; install kubectl (its `kustomize` needs no cluster)"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization}: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def only(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def pod_specs(objects: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """The pod templates of every Deployment and Job."""
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]


def compose() -> dict[str, Any]:
    """deploy/compose.yaml, parsed (YAML anchors and merges resolved)."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str
    stage: int
    """How many FROM lines came before or at this one (0 for ARGs before the first)."""


def dockerfile() -> list[Instruction]:
    """deploy/docker/Dockerfile as a list of instructions, comments dropped."""
    instructions: list[Instruction] = []
    stage = 0
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), arguments.strip(), stage))
    return instructions


def dockerfile_env() -> dict[str, str]:
    """Every variable the image's ENV lines set (last stage wins)."""
    env: dict[str, str] = {}
    for instruction in dockerfile():
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env
