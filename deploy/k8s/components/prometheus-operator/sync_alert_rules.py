"""Copy deploy/prometheus/alerts.yaml into the PrometheusRule and the Helm chart, so one file stays the truth.

Run after editing the alert rules:
`.venv/bin/python deploy/k8s/components/prometheus-operator/sync_alert_rules.py`.
tests/deploy/ fails while the copies differ from deploy/prometheus/alerts.yaml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[4]
SOURCE = ROOT / "deploy/prometheus/alerts.yaml"
PROMETHEUS_RULE = ROOT / "deploy/k8s/components/prometheus-operator/prometheusrule.yaml"
HELM_COPY = ROOT / "deploy/helm/ferryman/files/alerts.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by sync_alert_rules.py (beside this file); edit the source.
# Your Prometheus picks rules up through its ruleSelector: add the label it selects on (for
# kube-prometheus-stack, release: <its Helm release name>) in your overlay.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: ferryman
  labels:
    app.kubernetes.io/name: ferryman
spec:
"""


class _BlockStyleDumper(yaml.SafeDumper):
    """Writes multi-line PromQL as `|` blocks, so the generated file reads like the source."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _represent_str)


def render_prometheus_rule(alerts_yaml: str) -> str:
    """The PrometheusRule manifest whose spec.groups are the alert file's groups, unchanged."""
    groups = yaml.safe_load(alerts_yaml)["groups"]
    body = yaml.dump({"groups": groups}, Dumper=_BlockStyleDumper, sort_keys=False, width=110)
    return HEADER + "".join("  " + line if line.strip() else line for line in body.splitlines(True))


def main() -> None:
    """Rewrite both copies from the source."""
    PROMETHEUS_RULE.write_text(render_prometheus_rule(SOURCE.read_text(encoding="utf-8")), encoding="utf-8")
    HELM_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE, HELM_COPY)


if __name__ == "__main__":
    main()
