"""deploy/docker/Dockerfile: multi-stage, locked and hash-checked, unprivileged, health-checked.

The static checks always run. Building the image needs a container engine; where
none runs, the build test is skipped and its reason says the image was not built.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.deploy.conftest import (
    DOCKERFILE,
    ROOT,
    SETTING_NAMES,
    dockerfile,
    dockerfile_env,
    render,
)
from xiaohe.identity.server.cli import _parser
from xiaohe.identity.server.config import SettingsError, load_settings


def _final_stage() -> list[str]:
    """The keywords and arguments of the last stage, as `KEYWORD arguments` lines."""
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    return [f"{i.keyword} {i.arguments}" for i in instructions if i.stage == last]


def _one(keyword: str) -> str:
    (found,) = [line for line in _final_stage() if line.startswith(keyword + " ")]
    return found.partition(" ")[2]


def test_is_multi_stage_from_one_pinned_base() -> None:
    """At least two stages, all from the same base image, named by a version tag."""
    instructions = dockerfile()
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2
    assert all(f.startswith("${PYTHON_IMAGE} AS ") for f in froms), froms
    (arg,) = [i.arguments for i in instructions if i.keyword == "ARG" and i.stage == 0]
    name, _, image = arg.partition("=")
    assert name == "PYTHON_IMAGE"
    repository, _, tag = image.partition(":")
    assert repository == "python"  # by name: no registry host
    assert re.match(r"3\.11-", tag), "the lock is compiled for Python 3.11"


def test_the_runtime_stage_copies_the_venv_and_not_the_build_tools() -> None:
    """The final stage takes /opt/xiaohe-identity from the build stage and installs nothing."""
    stage = _final_stage()
    assert "COPY --from=build /opt/xiaohe-identity /opt/xiaohe-identity" in stage
    assert not any(line.startswith("RUN") and "pip install" in line for line in stage)


def test_installs_the_locked_dependencies_with_hashes() -> None:
    """requirements.lock goes in hash-checked, then the project without re-resolving."""
    runs = [i.arguments for i in dockerfile() if i.keyword == "RUN"]
    locked = [r for r in runs if "-r requirements.lock" in r]
    assert len(locked) == 1
    assert "--require-hashes" in locked[0]
    project = [r for r in runs if re.search(r"--no-deps \.(\s|$)", r)]
    assert len(project) == 1, "the project itself is installed with --no-deps"
    assert "COPY requirements.lock ./" in [
        f"{i.keyword} {i.arguments}" for i in dockerfile() if i.keyword == "COPY"
    ]


def test_uses_the_makefiles_uv() -> None:
    """The image installs with the same pinned uv as `make`."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    (version,) = re.findall(r"^UV_VERSION := (\S+)$", makefile, re.M)
    runs = " ".join(i.arguments for i in dockerfile() if i.keyword == "RUN")
    assert f'"uv=={version}"' in runs


def test_runs_as_a_user_without_privileges() -> None:
    """The final stage ends as a numeric, non-zero user (so runAsNonRoot can verify it)."""
    user = _one("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    for kustomization in ("base",):
        for obj in render(kustomization):
            if obj["kind"] == "Deployment":
                assert obj["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_the_health_check_is_the_cli_health_command() -> None:
    """HEALTHCHECK asks gRPC health through `xiaohe-identity health`, a real subcommand."""
    healthcheck = _one("HEALTHCHECK")
    _options, _, command = healthcheck.partition("CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["xiaohe-identity", "health"]
    parsed = _parser().parse_args(argv[1:])
    assert parsed.command == "health"
    assert json.loads(_one("ENTRYPOINT")) == ["xiaohe-identity"]
    assert json.loads(_one("CMD")) == ["serve"]


def test_every_setting_named_is_one_the_server_reads() -> None:
    """The image's XIAOHE_IDENTITY_* variables are Settings fields, and they load."""
    env = dockerfile_env()
    named = {n for n in env if n.startswith("XIAOHE_IDENTITY_")}
    assert named
    assert named <= SETTING_NAMES, sorted(named - SETTING_NAMES)
    mentioned = set(re.findall(r"\bXIAOHE_IDENTITY_\w+", DOCKERFILE.read_text(encoding="utf-8")))
    assert mentioned <= SETTING_NAMES, sorted(mentioned - SETTING_NAMES)


def test_the_image_refuses_plaintext_until_told() -> None:
    """Its defaults listen on every address, so they need TLS or ALLOW_PLAINTEXT (F5)."""
    env = {k: v for k, v in dockerfile_env().items() if k.startswith("XIAOHE_IDENTITY_")}
    with pytest.raises(SettingsError, match="XIAOHE_IDENTITY_LISTEN"):
        load_settings(env)
    settings = load_settings({**env, "XIAOHE_IDENTITY_ALLOW_PLAINTEXT": "true"})
    exposed = {int(p) for p in _one("EXPOSE").split()}
    assert int(settings.listen.rpartition(":")[2]) in exposed
    assert int(settings.metrics_listen.rpartition(":")[2]) in exposed


def test_copies_only_what_exists_and_is_not_ignored() -> None:
    """Every COPY source is in the repository and outside .dockerignore's exclusions."""
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = [
        i.arguments.split()[:-1]
        for i in dockerfile()
        if i.keyword == "COPY" and not i.arguments.startswith("--from")
    ]
    for group in sources:
        for source in group:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/").split("/")[0] not in ignored, source


def _engine_running() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    probe = subprocess.run(
        [docker, "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0 and bool(probe.stdout.strip())


@pytest.mark.timeout(1800)
def test_the_image_builds_unprivileged_and_health_checked() -> None:
    """Build the image and read its configuration back: user and health check as written."""
    if not _engine_running():
        pytest.skip(
            "no container engine runs on this machine: the image was NOT built; "
            "the Dockerfile's static checks above ran"
        )
    tag = "xiaohe-identity:deploy-test"
    build = subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    inspect = subprocess.run(
        ["docker", "image", "inspect", tag], capture_output=True, text=True, check=True
    )
    (config,) = [image["Config"] for image in json.loads(inspect.stdout)]
    assert config["User"] == _one("USER")
    assert config["Healthcheck"]["Test"][1:3] == ["xiaohe-identity", "health"]
