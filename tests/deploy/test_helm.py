"""The Helm chart lints, renders valid manifests, and its defaults are the seed's production numbers."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy._manifests import (
    ROOT,
    Rendered,
    assert_operator_resources,
    assert_seed_numbers,
    container,
    env_secret_refs,
    helm_template,
    run,
    tool,
    validate_strictly,
)

CHART = ROOT / "deploy/helm/ferryman"


def test_chart_lints_strictly() -> None:
    out = run([tool("helm"), "lint", "--strict", CHART])
    assert "0 chart(s) failed" in out


def test_default_render_validates_strictly(helm_defaults: Rendered, tmp_path: Path) -> None:
    assert helm_defaults.kinds() == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    validate_strictly(helm_defaults.docs, tmp_path)


def test_defaults_are_the_seed_numbers(helm_defaults: Rendered) -> None:
    assert_seed_numbers(helm_defaults, deployment="ferryman", service="ferryman", hpa="ferryman")


def test_monitoring_resources_render_with_the_alert_rules(helm_monitored: Rendered, tmp_path: Path) -> None:
    assert {"ServiceMonitor", "PrometheusRule"} <= helm_monitored.kinds()
    validate_strictly(helm_monitored.docs, tmp_path)
    assert_operator_resources(helm_monitored)
    chart_copy = (CHART / "files/alerts.yaml").read_text(encoding="utf-8")
    assert chart_copy == (ROOT / "deploy/prometheus/alerts.yaml").read_text(encoding="utf-8")


def test_config_is_the_shipped_config(helm_defaults: Rendered) -> None:
    rendered = yaml.safe_load(helm_defaults.one("ConfigMap", "ferryman-config")["data"]["config.yaml"])
    shipped = yaml.safe_load((ROOT / "deploy/docker/config.yaml").read_text(encoding="utf-8"))
    assert rendered == shipped


def test_deployment_matches_the_kustomize_one(helm_defaults: Rendered, production: Rendered) -> None:
    ours, theirs = helm_defaults.one("Deployment"), production.one("Deployment")
    for key in ("args", "resources", "livenessProbe", "readinessProbe", "lifecycle", "securityContext"):
        assert container(ours)[key] == container(theirs)[key], key
    assert sorted(env_secret_refs(ours)) == sorted(env_secret_refs(theirs))
    pod, kpod = ours["spec"]["template"]["spec"], theirs["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == kpod["terminationGracePeriodSeconds"] == 45
    assert pod["securityContext"] == kpod["securityContext"]
    assert "checksum/config" in ours["spec"]["template"]["metadata"]["annotations"]


def test_several_workers_get_a_multiprocess_metrics_dir() -> None:
    gateway = container(Rendered(helm_template("workers=4")).one("Deployment"))
    assert gateway["args"][-2:] == ["--workers", "4"]
    multiproc = {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/metrics"}  # noqa: S108 - in the container
    assert multiproc in gateway["env"]
    single = container(Rendered(helm_template()).one("Deployment"))
    assert "--workers" not in single["args"]
    assert "PROMETHEUS_MULTIPROC_DIR" not in {var["name"] for var in single["env"]}


def test_secret_is_created_only_on_request(helm_defaults: Rendered, tmp_path: Path) -> None:
    assert "Secret" not in helm_defaults.kinds()
    created = Rendered(helm_template("secret.create=true", "secret.values.master-key=sk-test"))
    secret = created.one("Secret", "ferryman-secrets")
    assert secret["stringData"] == {"master-key": "sk-test"}
    validate_strictly([secret], tmp_path)


def test_autoscaling_and_budget_can_be_switched_off() -> None:
    kinds = Rendered(helm_template("autoscaling.enabled=false", "podDisruptionBudget.enabled=false")).kinds()
    assert "HorizontalPodAutoscaler" not in kinds
    assert "PodDisruptionBudget" not in kinds


def test_an_admin_port_gets_a_private_service_and_its_own_ingress_rule(tmp_path: Path) -> None:
    rendered = Rendered(helm_template("config.server.admin_port=9001"))
    validate_strictly(rendered.docs, tmp_path)
    ports = container(rendered.one("Deployment"))["ports"]
    assert {"name": "admin", "containerPort": 9001, "protocol": "TCP"} in ports
    admin = rendered.one("Service", "ferryman-admin")
    assert admin["spec"]["type"] == "ClusterIP"  # never a LoadBalancer, whatever the public Service is
    assert admin["spec"]["ports"] == [
        {"name": "admin", "port": 8001, "targetPort": "admin", "protocol": "TCP"}
    ]
    rules = rendered.one("NetworkPolicy")["spec"]["ingress"]
    assert {"ports": [{"port": 9001, "protocol": "TCP"}], "from": [{"podSelector": {}}]} in rules
    config = yaml.safe_load(rendered.one("ConfigMap", "ferryman-config")["data"]["config.yaml"])
    assert config["server"]["admin_port"] == 9001
    default = Rendered(helm_template())
    assert [doc["metadata"]["name"] for doc in default.docs if doc["kind"] == "Service"] == ["ferryman"]
