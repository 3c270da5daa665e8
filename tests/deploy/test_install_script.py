"""scripts/install-deploy-tools.sh is idempotent and quick once everything is installed."""

from __future__ import annotations

import subprocess
import time

from tests.deploy._manifests import ROOT, tool

SCRIPT = ROOT / "scripts/install-deploy-tools.sh"


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_second_run_changes_nothing_and_is_quick() -> None:
    for name in ("helm", "kubectl", "kustomize", "hadolint", "kubernetes-validate", "check-jsonschema"):
        tool(name)  # fails with the install hint if the script has not been run
    started = time.monotonic()
    done = subprocess.run([SCRIPT], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 5
    assert "helm and kubectl already installed" in done.stderr
    assert "Python tools already installed" in done.stderr


def test_kustomize_wrapper_builds_like_kubectl() -> None:
    base = ROOT / "deploy/k8s/base"
    kubectl = subprocess.run([tool("kubectl"), "kustomize", base], capture_output=True, text=True, check=True)
    wrapper = subprocess.run([tool("kustomize"), "build", base], capture_output=True, text=True, check=True)
    assert wrapper.stdout == kubectl.stdout
    assert "kind: Deployment" in wrapper.stdout
