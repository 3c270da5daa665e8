"""The kustomize base and overlays render, pass strict schema validation, and carry the seed's numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ferryman.settings import load_settings
from tests.deploy._manifests import (
    ROOT,
    Rendered,
    assert_operator_resources,
    assert_seed_numbers,
    container,
    env_secret_refs,
    is_operator_crd,
    kustomize,
    run,
    validate_strictly,
)

K8S = ROOT / "deploy" / "k8s"
BASE_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
}


@pytest.mark.parametrize("overlay", ["base", "staging", "production", "blue-green"])
def test_every_kustomization_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    rendered = Rendered(kustomize(overlay))
    assert BASE_KINDS <= rendered.kinds()
    validate_strictly(rendered.docs, tmp_path)


@pytest.mark.parametrize("overlay", ["staging", "production", "blue-green"])
def test_overlays_add_the_prometheus_operator_resources(overlay: str) -> None:
    assert_operator_resources(Rendered(kustomize(overlay)))


def test_base_needs_no_custom_resource_definitions(base: Rendered) -> None:
    assert not [doc for doc in base.docs if is_operator_crd(doc)]


def test_production_carries_the_seed_numbers(production: Rendered) -> None:
    assert_seed_numbers(production, deployment="ferryman", service="ferryman", hpa="ferryman")


def test_production_runs_in_a_restricted_namespace(production: Rendered) -> None:
    namespace = production.one("Namespace", "ferryman")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {doc["metadata"].get("namespace") for doc in production.docs if doc["kind"] != "Namespace"} == {
        "ferryman"
    }


def test_staging_is_smaller_and_private(staging: Rendered) -> None:
    assert staging.one("Deployment", "ferryman")["spec"]["replicas"] == 1
    hpa = staging.one("HorizontalPodAutoscaler", "ferryman")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    assert staging.one("Service", "ferryman")["spec"]["type"] == "ClusterIP"
    assert {doc["metadata"].get("namespace") for doc in staging.docs if doc["kind"] != "Namespace"} == {
        "ferryman-staging"
    }


def test_pods_are_hardened_for_a_read_only_root(production: Rendered) -> None:
    pod = production.one("Deployment", "ferryman")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    gateway = container(production.one("Deployment", "ferryman"))
    assert gateway["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = volumes[mounts["/tmp"]]  # noqa: S108 - a path inside the container
    assert "emptyDir" in tmp, "the container's /tmp must be writable: an emptyDir"
    assert volumes[mounts["/etc/ferryman"]]["configMap"]["name"].startswith("ferryman-config-")
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }


def test_grace_period_covers_prestop_shutdown_delay_and_drain(production: Rendered) -> None:
    deployment = production.one("Deployment", "ferryman")
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    server = yaml.safe_load(_config_map_text(production))["server"]
    needed = int(pre_stop[1]) + server["shutdown_delay_seconds"] + server["drain_timeout_seconds"]
    assert int(pre_stop[1]) == server["shutdown_delay_seconds"] == 5
    assert pod["terminationGracePeriodSeconds"] == 45
    assert pod["terminationGracePeriodSeconds"] > needed, "no margin left for flushing pending writes"


def test_config_map_is_the_shipped_config_and_validates(production: Rendered) -> None:
    text = _config_map_text(production)
    assert text == (ROOT / "deploy/docker/config.yaml").read_text(encoding="utf-8")
    assert (K8S / "base/config.yaml").read_text(encoding="utf-8") == text
    # Every ${VAR} the config reads must come from the Deployment's environment (the Secret).
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    provided = {name for name, _, _ in env_secret_refs(production.one("Deployment", "ferryman"))}
    assert referenced == provided
    settings = load_settings(K8S / "base/config.yaml", environ={name: f"value-{name}" for name in provided})
    assert {route.name: route.deployments[0].provider for route in settings.models} == {
        "gpt-4o-mini": "openai",
        "claude-sonnet": "anthropic",
        "gemini-flash": "gemini",
    }
    assert {route.deployments[0].model for route in settings.models} == {
        "gpt-4o-mini",
        "claude-sonnet-4-5",
        "gemini-2.5-flash",
    }
    assert settings.redis_url == "value-REDIS_URL"
    assert settings.database_url == "value-DATABASE_URL"


def test_secret_example_has_every_key_and_no_value(production: Rendered, tmp_path: Path) -> None:
    example = yaml.safe_load((K8S / "base/secret.example.yaml").read_text(encoding="utf-8"))
    validate_strictly([example], tmp_path)
    assert set(example["stringData"].values()) == {""}
    refs = list(env_secret_refs(production.one("Deployment", "ferryman")))
    assert {name for _, name, _ in refs} == {example["metadata"]["name"]}
    assert {key for _, _, key in refs} == set(example["stringData"])
    listed = yaml.safe_load((K8S / "base/kustomization.yaml").read_text(encoding="utf-8"))["resources"]
    assert "secret.example.yaml" not in listed, "applying the example would blank the real keys"


def test_hpa_and_pdb_target_the_gateway(production: Rendered) -> None:
    labels = production.one("Deployment", "ferryman")["spec"]["template"]["metadata"]["labels"]
    pdb = production.one("PodDisruptionBudget", "ferryman")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert all(labels.get(k) == v for k, v in pdb["selector"]["matchLabels"].items())
    policy = production.one("NetworkPolicy", "ferryman")["spec"]
    assert all(labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = {port["port"] for rule in policy["egress"] for port in rule["ports"]}
    assert {53, 443, 5432, 6379} <= egress_ports


def test_release_overlay_pins_the_image_digest() -> None:
    digest = "sha256:" + "ab" * 32
    out = run([K8S / "release-overlay.sh", "production", "ghcr.io/acme/ferryman", digest])
    images = {
        container(doc)["image"] for doc in yaml.safe_load_all(out) if doc and doc["kind"] == "Deployment"
    }
    assert images == {f"ghcr.io/acme/ferryman@{digest}"}


def _config_map_text(rendered: Rendered) -> str:
    [config_map] = [
        c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].startswith("ferryman-config")
    ]
    return str(config_map["data"]["config.yaml"])
