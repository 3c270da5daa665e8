"""Render, validate and query Kubernetes manifests with the tools scripts/install-deploy-tools.sh installs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run scripts/install-deploy-tools.sh (it installs helm, kubectl, kustomize, hadolint, …)"
KUBERNETES_VERSION = "1.35.0"  # the kubectl the install script brings; validate against the same API
OPERATOR_GROUP = "monitoring.coreos.com/"  # CRDs without a bundled schema: checked by hand instead

Manifest = dict[str, Any]


def tool(name: str) -> Path:
    """The path of a validation tool, failing (never skipping) with the install hint when it is missing."""
    for folder in (ROOT / ".tools" / "bin", ROOT / ".venv" / "bin"):
        candidate = folder / name
        if candidate.is_file() and candidate.stat().st_mode & 0o111:
            return candidate
    pytest.fail(f"{name} is not installed: {INSTALL_HINT}")


def run(args: Iterable[str | Path], *, env: Mapping[str, str] | None = None) -> str:
    """Run a command, fail the test with its output unless it exits 0, and return its stdout."""
    argv = [str(arg) for arg in args]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def load_all(text: str) -> list[Manifest]:
    """Every non-empty YAML document in a multi-document stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomize(overlay: str) -> list[Manifest]:
    """`kubectl kustomize deploy/k8s/<overlay>`, parsed."""
    return load_all(run([tool("kubectl"), "kustomize", ROOT / "deploy" / "k8s" / overlay]))


def helm_template(*settings: str) -> list[Manifest]:
    """`helm template` of deploy/helm/ferryman as release "ferryman", with `--set` overrides."""
    args: list[str | Path] = [tool("helm"), "template", "ferryman", ROOT / "deploy/helm/ferryman"]
    args += ["--namespace", "ferryman"]
    for setting in settings:
        args += ["--set", setting]
    return load_all(run(args))


def is_operator_crd(doc: Manifest) -> bool:
    """ServiceMonitor and PrometheusRule: custom resources kubernetes-validate has no schema for."""
    return str(doc["apiVersion"]).startswith(OPERATOR_GROUP)


def validate_strictly(docs: list[Manifest], tmp_path: Path) -> None:
    """kubernetes-validate --strict on every built-in resource (unknown fields are errors)."""
    builtin = [doc for doc in docs if not is_operator_crd(doc)]
    assert builtin, "nothing to validate"
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(builtin), encoding="utf-8")
    validator = tool("kubernetes-validate")
    out = run([validator, "--strict", "--quiet", "-k", KUBERNETES_VERSION, path])
    assert "ERROR" not in out and "WARN" not in out, out


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered set of manifests with lookups by kind and name."""

    docs: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        """Every document of one kind."""
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        """The single document of a kind (and name), failing clearly when there are none or several."""
        found = [doc for doc in self.of_kind(kind) if name is None or doc["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        """The kinds present."""
        return {doc["kind"] for doc in self.docs}


def container(deployment: Manifest) -> Manifest:
    """The gateway container of a Deployment."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["ferryman"]
    return dict(containers[0])


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (equality map) matches a set of labels."""
    return all(labels.get(key) == value for key, value in selector.items())


def env_secret_refs(deployment: Manifest) -> Iterator[tuple[str, str, str]]:
    """(variable, secret name, secret key) for every env var read from a Secret."""
    for var in container(deployment).get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            yield var["name"], ref["name"], ref["key"]


def assert_seed_numbers(rendered: Rendered, deployment: str, service: str, hpa: str) -> None:
    """The seed guide's production numbers, exactly (seed/production-deployment-guide.md)."""
    dep = rendered.one("Deployment", deployment)
    assert dep["spec"]["replicas"] == 3
    gateway = container(dep)
    assert gateway["resources"] == {
        "requests": {"memory": "256Mi", "cpu": "250m"},
        "limits": {"memory": "512Mi", "cpu": "500m"},
    }
    assert {"containerPort": 8000, "name": "http", "protocol": "TCP"} in gateway["ports"]
    live, ready = gateway["livenessProbe"], gateway["readinessProbe"]
    assert live["httpGet"] == {"path": "/health/live", "port": 8000}
    assert (live["initialDelaySeconds"], live["periodSeconds"]) == (30, 10)
    assert ready["httpGet"] == {"path": "/health/ready", "port": 8000}
    assert (ready["initialDelaySeconds"], ready["periodSeconds"]) == (5, 5)

    svc = rendered.one("Service", service)["spec"]
    assert svc["type"] == "LoadBalancer"
    assert [(p["port"], p["targetPort"]) for p in svc["ports"]] == [(80, 8000)]
    assert selects(svc["selector"], dep["spec"]["template"]["metadata"]["labels"])

    assert_seed_hpa(rendered.one("HorizontalPodAutoscaler", hpa), deployment)


def assert_seed_hpa(hpa: Manifest, deployment: str) -> None:
    """The seed's autoscaling/v2 HPA: 2-10 replicas, 70 % CPU, 80 % memory, and its two policies."""
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in spec["metrics"]}
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    assert spec["behavior"] == {
        "scaleDown": {
            "stabilizationWindowSeconds": 300,
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
        },
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
        },
    }


def assert_operator_resources(rendered: Rendered) -> None:
    """ServiceMonitor and PrometheusRule: the Operator's shape, scrape job "ai-api", our alert rules."""
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    # ServiceDown is up{job="ai-api"} == 0: without this rewrite the job is the Service's name.
    assert {"action": "replace", "targetLabel": "job", "replacement": "ai-api"} in endpoint["relabelings"]
    scraped = [
        svc
        for svc in rendered.of_kind("Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], svc["metadata"].get("labels", {}))
    ]
    assert scraped, "the ServiceMonitor selects no Service"
    assert all("http" in [p["name"] for p in svc["spec"]["ports"]] for svc in scraped)

    rule = rendered.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    source = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text(encoding="utf-8"))
    assert rule["spec"] == {"groups": source["groups"]}, (
        "PrometheusRule differs from deploy/prometheus/alerts.yaml: run "
        ".venv/bin/python deploy/k8s/components/prometheus-operator/sync_alert_rules.py"
    )
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            assert {"alert", "expr", "labels"} <= set(alert), alert
            assert alert["labels"]["severity"] in {"warning", "critical"}
