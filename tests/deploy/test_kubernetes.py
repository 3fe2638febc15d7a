"""deploy/k8s: the base and every overlay render, and the rendered objects are safe to run.

Rendering uses `kubectl kustomize` (required: without it these tests fail, saying the
manifests were not checked). The assertions are the ones a reviewer would make by eye:
gRPC probes on the gRPC port, resources, a locked-down securityContext, secrets by
reference, selectors that match, and settings the server actually reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import KUSTOMIZATIONS, ROOT, SETTING_NAMES, only, pod_specs, render
from xiaohe.identity.server.config import load_settings

SECRET_SETTINGS = {"XIAOHE_IDENTITY_DATABASE_URL", "XIAOHE_IDENTITY_REDIS_URL"}
"""Settings that carry a password: they come from a Secret, never from a literal value."""

SAMPLE_SECRETS = {
    "XIAOHE_IDENTITY_DATABASE_URL": "postgresql+asyncpg://identity:pw@postgres:5432/identity",
    "XIAOHE_IDENTITY_REDIS_URL": "redis://:pw@redis:6379/0",
}
"""Stand-ins for the Secrets' values, to load the settings a pod would start with."""


def _deployment(kustomization: str) -> dict[str, Any]:
    (deployment,) = only(render(kustomization), "Deployment")
    return deployment


def _server(kustomization: str) -> dict[str, Any]:
    containers = _deployment(kustomization)["spec"]["template"]["spec"]["containers"]
    (server,) = [c for c in containers if c["name"] == "identity"]
    assert isinstance(server, dict)
    return server


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _all_containers(kustomization: str) -> list[dict[str, Any]]:
    return [
        c
        for spec in pod_specs(render(kustomization))
        for c in (*spec.get("initContainers", []), *spec["containers"])
    ]


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_every_kind_the_service_needs(kustomization: str) -> None:
    """Each kustomization renders one of each object, under the project's name."""
    kinds = sorted(o["kind"] for o in render(kustomization))
    assert kinds == sorted(
        [
            "Deployment",
            "HorizontalPodAutoscaler",
            "Job",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )
    for obj in render(kustomization):
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "xiaohe-identity"


@pytest.mark.parametrize("kustomization", ["overlays/staging", "overlays/production"])
def test_overlays_put_everything_in_their_namespace(kustomization: str) -> None:
    """An overlay names one namespace for all its objects, each overlay its own."""
    namespaces = {o["metadata"].get("namespace") for o in render(kustomization)}
    assert len(namespaces) == 1
    assert None not in namespaces
    others = {o["metadata"].get("namespace") for k in KUSTOMIZATIONS for o in render(k)}
    assert len(others) == 3  # base (none), staging, production


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_readiness_follows_grpc_health_and_liveness_only_the_port(kustomization: str) -> None:
    """Readiness asks grpc.health.v1 (which follows the stores) on the port the server
    listens on; startup and liveness only connect to it, so a store outage takes pods out
    of the Service without restarting them."""
    server = _server(kustomization)
    (grpc_port,) = [p["containerPort"] for p in server["ports"] if p["name"] == "grpc"]
    listen = _env(server)["XIAOHE_IDENTITY_LISTEN"]["value"]
    assert listen.rpartition(":")[2] == str(grpc_port)
    assert server["readinessProbe"]["grpc"]["port"] == grpc_port
    assert set(server["readinessProbe"]) & {"httpGet", "tcpSocket", "exec"} == set()
    for probe in ("livenessProbe", "startupProbe"):
        assert server[probe]["tcpSocket"]["port"] == grpc_port, probe
        assert set(server[probe]) & {"httpGet", "grpc", "exec"} == set(), probe


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_container_has_requests_and_limits(kustomization: str) -> None:
    """CPU and memory are requested and capped in every container, init and Job included."""
    for container in _all_containers(kustomization):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (container["name"], kind)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_workers_match_the_cpu_limit(kustomization: str) -> None:
    """One worker process per core the pod may use (operator guide, scaling rules)."""
    server = _server(kustomization)
    workers = int(_env(server)["XIAOHE_IDENTITY_WORKERS"]["value"])
    assert workers >= 1
    assert workers == _cores(str(server["resources"]["limits"]["cpu"]))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_containers_run_unprivileged(kustomization: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, every capability dropped."""
    for spec in pod_specs(render(kustomization)):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        assert not spec.get("hostNetwork")
        assert not spec.get("hostPID")
    for container in _all_containers(kustomization):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "add" not in context["capabilities"], container["name"]
        assert not context.get("privileged"), container["name"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_secrets_are_referenced_never_written(kustomization: str) -> None:
    """Database and Redis URLs come from Secret references; no Secret object is committed."""
    assert only(render(kustomization), "Secret") == []
    for container in _all_containers(kustomization):
        for name, entry in _env(container).items():
            if name in SECRET_SETTINGS:
                assert "value" not in entry, (container["name"], name)
                assert entry["valueFrom"]["secretKeyRef"]["name"].startswith("xiaohe-identity-")
    server_env = _env(_server(kustomization))
    assert set(server_env) >= SECRET_SETTINGS
    refs = {server_env[n]["valueFrom"]["secretKeyRef"]["name"] for n in SECRET_SETTINGS}
    assert refs == {"xiaohe-identity-database", "xiaohe-identity-redis"}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_key_ring_comes_from_its_secret_as_a_private_copy(kustomization: str) -> None:
    """The ring Secret is copied 0600 into memory, and the server reads that copy (F5)."""
    spec = _deployment(kustomization)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["keyring-secret"]["secret"]["secretName"] == "xiaohe-identity-keyring"
    assert volumes["keyring"]["emptyDir"]["medium"] == "Memory"
    (copy,) = spec["initContainers"]
    assert copy["command"][:3] == ["install", "-m", "0600"]
    keyring_file = _env(_server(kustomization))["XIAOHE_IDENTITY_KEYRING_FILE"]["value"]
    assert copy["command"][-1] == keyring_file
    mounts = {m["name"]: m for m in _server(kustomization)["volumeMounts"]}
    assert keyring_file.startswith(mounts["keyring"]["mountPath"] + "/")
    assert mounts["keyring"]["readOnly"] is True
    assert "keyring-secret" not in mounts


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_autoscaler_budget_service_and_policy_select_the_server_pods(kustomization: str) -> None:
    """HPA targets the Deployment; PDB, Service and NetworkPolicy select its pods' labels."""
    objects = render(kustomization)
    deployment = _deployment(kustomization)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    (hpa,) = only(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    (pdb,) = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert (
        pdb["spec"].get("maxUnavailable", 0) >= 1
        or pdb["spec"]["minAvailable"] < (hpa["spec"]["minReplicas"])
    )

    (service,) = only(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["targetPort"] == "grpc"

    (policy,) = only(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {50051, 9464}
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "every ingress rule names who may connect"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_migration_job_runs_migrate_against_the_same_database(kustomization: str) -> None:
    """The Job runs `xiaohe-identity migrate` with the server's image and database Secret."""
    (job,) = only(render(kustomization), "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["args"] == ["migrate"]
    assert "command" not in container  # the image's entry point, xiaohe-identity
    server = _server(kustomization)
    assert container["image"] == server["image"]
    job_db = _env(container)["XIAOHE_IDENTITY_DATABASE_URL"]["valueFrom"]
    assert job_db == _env(server)["XIAOHE_IDENTITY_DATABASE_URL"]["valueFrom"]
    policy_labels = only(render(kustomization), "NetworkPolicy")[0]["spec"]["podSelector"]
    assert (
        policy_labels["matchLabels"].items()
        <= job["spec"]["template"]["metadata"]["labels"].items()
    ), "the Job's pods get the policy's egress to PostgreSQL"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_setting_named_is_one_the_server_reads(kustomization: str) -> None:
    """Each XIAOHE_IDENTITY_* variable in the manifests is a Settings field (config.py)."""
    for container in _all_containers(kustomization):
        names = {n for n in _env(container) if n.startswith("XIAOHE_IDENTITY_")}
        assert names <= SETTING_NAMES, (container["name"], sorted(names - SETTING_NAMES))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_server_settings_load(kustomization: str) -> None:
    """With the Secrets' values filled in, the pod's environment is a valid configuration."""
    env = {
        name: entry.get("value", SAMPLE_SECRETS.get(name, ""))
        for name, entry in _env(_server(kustomization)).items()
    }
    settings = load_settings(env)
    assert not settings.embedded_store
    assert settings.allow_plaintext  # the gRPC probes speak plaintext; TLS is the mesh's
    assert settings.effective_workers == int(env["XIAOHE_IDENTITY_WORKERS"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_password_hashing_fits_the_pod(kustomization: str) -> None:
    """Argon2 threads are set (the default follows the node's cores) and fit the CPU limit."""
    server = _server(kustomization)
    env = _env(server)
    threads = int(env["XIAOHE_IDENTITY_PASSWORD_HASH_THREADS"]["value"])
    workers = int(env["XIAOHE_IDENTITY_WORKERS"]["value"])
    assert 1 <= workers * threads <= _cores(str(server["resources"]["limits"]["cpu"]))


def test_the_operator_guide_names_every_secret_to_create() -> None:
    """Each Secret the manifests reference appears in the guide's creation commands."""
    guide = (ROOT / "docs" / "operator-guide.md").read_text(encoding="utf-8")
    referenced: set[str] = set()
    for kustomization in KUSTOMIZATIONS:
        for container in _all_containers(kustomization):
            for entry in _env(container).values():
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(f"create secret generic {ref['name']} --from-file={ref['key']}=")
        for spec in pod_specs(render(kustomization)):
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    for item in volume["secret"]["items"]:
                        referenced.add(
                            f"create secret generic {volume['secret']['secretName']} "
                            f"--from-file={item['key']}="
                        )
    assert len(referenced) == 3
    for command in referenced:
        assert command in guide, command
