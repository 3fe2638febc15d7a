"""deploy/compose.yaml: the services a one-host installation needs, wired to real settings.

Compose itself is not run here (no container engine); the file is parsed with its
anchors resolved, and its server environment is loaded by the server's own settings
code with stand-in passwords.
"""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.conftest import COMPOSE, SETTING_NAMES, compose
from xiaohe.identity.server.config import load_settings

INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def _services() -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    return services


def _interpolate(value: str) -> str:
    """What compose makes of `${NAME:?…}` when NAME is set to a stand-in."""
    return INTERPOLATION.sub(lambda m: f"sample-{m.group(1).lower()}", value)


def _env(service: str) -> dict[str, str]:
    environment = _services()[service].get("environment", {})
    assert isinstance(environment, dict), f"{service}: environment as a mapping"
    return {k: str(v) for k, v in environment.items()}


def test_has_the_server_its_stores_and_its_jobs() -> None:
    """Server, PostgreSQL, Redis, key ring and migration jobs, load test as a profile."""
    services = _services()
    assert set(services) == {"identity", "postgres", "redis", "keys", "migrate", "loadtest"}
    profiled = {name for name, s in services.items() if s.get("profiles")}
    assert profiled == {"loadtest"}
    assert services["loadtest"]["profiles"] == ["loadtest"]


def test_the_server_runs_two_workers() -> None:
    """The compose server runs 2 worker processes, by the setting `serve` reads."""
    server = _services()["identity"]
    assert server["command"] == ["serve"]
    settings = load_settings({k: _interpolate(v) for k, v in _env("identity").items()})
    assert settings.effective_workers == 2


def test_the_server_settings_load_and_use_the_external_stores() -> None:
    """With the passwords set, the environment is valid and points at the compose stores."""
    settings = load_settings({k: _interpolate(v) for k, v in _env("identity").items()})
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in settings.database_url
    assert "@redis:6379/" in settings.redis_url
    assert not settings.embedded_store
    assert settings.keyring_file


def test_every_setting_named_is_one_the_server_reads() -> None:
    """Each XIAOHE_IDENTITY_* variable in compose (and in its commands) is a Settings field."""
    text = COMPOSE.read_text(encoding="utf-8")
    named = set(re.findall(r"\bXIAOHE_IDENTITY_\w+", text))
    assert named, "compose configures the server through its settings"
    assert named <= SETTING_NAMES, sorted(named - SETTING_NAMES)


def test_passwords_are_interpolated_never_written() -> None:
    """Every password is `${…:?…}` from the caller's environment, required, never a literal."""
    services = _services()
    for name, value in [
        ("postgres", _env("postgres")["POSTGRES_PASSWORD"]),
        ("identity", _env("identity")["XIAOHE_IDENTITY_DATABASE_URL"]),
        ("identity", _env("identity")["XIAOHE_IDENTITY_REDIS_URL"]),
        ("redis", " ".join(services["redis"]["command"])),
    ]:
        assert re.search(r"\$\{XIAOHE_\w+_PASSWORD:\?[^}]+\}", value), name
    for url in (
        _env("identity")["XIAOHE_IDENTITY_DATABASE_URL"],
        _env("migrate")["XIAOHE_IDENTITY_DATABASE_URL"],
    ):
        password = url.split("://", 1)[1].rpartition("@")[0].partition(":")[2]
        assert password.startswith("${"), "the password part is interpolated"


def test_jobs_run_before_the_server() -> None:
    """The server starts after the key ring and migration jobs finished and the stores are up."""
    services = _services()
    assert services["migrate"]["command"] == ["migrate"]
    assert "keys init" in " ".join(services["keys"]["command"])
    depends = services["identity"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["keys"]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert (
        _env("migrate")["XIAOHE_IDENTITY_DATABASE_URL"]
        == _env("identity")["XIAOHE_IDENTITY_DATABASE_URL"]
    )
    keyring = _env("identity")["XIAOHE_IDENTITY_KEYRING_FILE"]
    assert _env("keys")["XIAOHE_IDENTITY_KEYRING_FILE"] == keyring
    mounted = [v.split(":") for v in services["identity"]["volumes"]]
    assert any(keyring.startswith(path + "/") and rest == ["ro"] for _, path, *rest in mounted)


def test_project_containers_run_unprivileged() -> None:
    """Every service built from the project image: non-root, read-only, no capabilities."""
    for name in ("identity", "keys", "migrate", "loadtest"):
        service = _services()[name]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile", name
        assert not service["user"].startswith("0"), name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_published_ports_stay_on_loopback() -> None:
    """Plaintext gRPC is allowed only because the host publishes it on loopback alone."""
    server = _services()["identity"]
    assert _env("identity")["XIAOHE_IDENTITY_ALLOW_PLAINTEXT"] == "true"
    for port in server["ports"]:
        assert port.startswith("127.0.0.1:"), port
    for name, service in _services().items():
        if name != "identity":
            assert "ports" not in service, name


def test_the_load_test_profile_runs_the_project_image_with_its_own_command() -> None:
    """The load-test service uses the project image, an overridable command, the server."""
    loadtest = _services()["loadtest"]
    assert loadtest["image"] == _services()["identity"]["image"]
    assert loadtest["entrypoint"] == []
    assert isinstance(loadtest["command"], list)
    assert loadtest["depends_on"]["identity"]["condition"] == "service_healthy"
    assert _env("loadtest")["XIAOHE_TARGET"] == "identity:50051"


def test_images_are_pinned_by_tag() -> None:
    """Third-party images carry a version tag, never `latest` or none, and no registry host."""
    for name in ("postgres", "redis"):
        image = _services()[name]["image"]
        repository, _, tag = image.partition(":")
        assert re.match(r"\d", tag), f"{image}: a version tag (not latest, not none)"
        assert "/" not in repository, image
        assert "." not in repository, image
