"""Blue-green: two Deployments, one live Service, and a switch script whose patch selects what it claims."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy._manifests import ROOT, Manifest, Rendered, assert_seed_hpa, selects

SWITCH = ROOT / "deploy/k8s/blue-green/switch.sh"


def _pod_labels(rendered: Rendered, colour: str) -> dict[str, str]:
    return dict(rendered.one("Deployment", f"ferryman-{colour}")["spec"]["template"]["metadata"]["labels"])


def _dry_run_patch(colour: str) -> Manifest:
    done = subprocess.run([SWITCH, "--dry-run", colour], capture_output=True, text=True, check=True)
    assert f"patch service ferryman --type strategic -p '{done.stdout.strip()}'" in done.stderr
    return dict(json.loads(done.stdout))


def _strategic_merge_selector(service_spec: Manifest, patch: Manifest) -> dict[str, str]:
    """What the API server does with a strategic merge patch of `spec.selector` (a plain map: keys merge)."""
    return {**service_spec["selector"], **patch["spec"]["selector"]}


def test_two_deployments_of_different_colours(blue_green: Rendered) -> None:
    assert {d["metadata"]["name"] for d in blue_green.of_kind("Deployment")} == {
        "ferryman-blue",
        "ferryman-green",
    }
    blue, green = _pod_labels(blue_green, "blue"), _pod_labels(blue_green, "green")
    assert (blue["color"], green["color"]) == ("blue", "green")
    for colour in ("blue", "green"):
        spec = blue_green.one("Deployment", f"ferryman-{colour}")["spec"]
        assert spec["selector"]["matchLabels"]["color"] == colour
        assert_seed_hpa(blue_green.one("HorizontalPodAutoscaler", f"ferryman-{colour}"), f"ferryman-{colour}")


def test_live_service_selects_exactly_one_colour(blue_green: Rendered) -> None:
    live = blue_green.one("Service", "ferryman")["spec"]
    assert live["type"] == "LoadBalancer"
    assert [(p["port"], p["targetPort"]) for p in live["ports"]] == [(80, 8000)]
    assert selects(live["selector"], _pod_labels(blue_green, "blue"))
    assert not selects(live["selector"], _pod_labels(blue_green, "green"))


def test_each_colour_has_a_private_preview_service(blue_green: Rendered) -> None:
    for colour, other in (("blue", "green"), ("green", "blue")):
        preview = blue_green.one("Service", f"ferryman-{colour}")["spec"]
        assert preview["type"] == "ClusterIP"
        assert selects(preview["selector"], _pod_labels(blue_green, colour))
        assert not selects(preview["selector"], _pod_labels(blue_green, other))


def test_metrics_are_scraped_once_per_pod(blue_green: Rendered) -> None:
    wanted = blue_green.one("ServiceMonitor")["spec"]["selector"]["matchLabels"]
    scraped = {
        s["metadata"]["name"]
        for s in blue_green.of_kind("Service")
        if selects(wanted, s["metadata"]["labels"])
    }
    assert scraped == {"ferryman-blue", "ferryman-green"}, "the live Service would scrape its colour twice"


@pytest.mark.parametrize(("target", "other"), [("green", "blue"), ("blue", "green")])
def test_switch_patch_selects_the_colour_it_names(blue_green: Rendered, target: str, other: str) -> None:
    patch = _dry_run_patch(target)
    selector = _strategic_merge_selector(blue_green.one("Service", "ferryman")["spec"], patch)
    assert selects(selector, _pod_labels(blue_green, target))
    assert not selects(selector, _pod_labels(blue_green, other))


def test_switch_then_rollback_restores_the_original_selector(blue_green: Rendered) -> None:
    original = blue_green.one("Service", "ferryman")["spec"]
    switched = _strategic_merge_selector(original, _dry_run_patch("green"))
    rolled_back = _strategic_merge_selector({"selector": switched}, _dry_run_patch("blue"))
    assert rolled_back == original["selector"]


@pytest.mark.parametrize("args", [[], ["purple"], ["blue", "green"], ["--dry-run"]])
def test_switch_rejects_bad_arguments(args: list[str]) -> None:
    done = subprocess.run([SWITCH, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "usage:" in done.stderr


def test_switch_waits_for_the_rollout_then_patches(tmp_path: Path) -> None:
    log = tmp_path / "kubectl.log"
    fake = tmp_path / "kubectl"
    # A stand-in kubectl: records its arguments, and reports the selector as the one last patched in.
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        f"state={tmp_path}/colour\n"
        'if [[ "$*" == *" patch "* ]]; then [[ "$*" == *green* ]] && echo green > "$state"; exit 0; fi\n'
        'if [[ "$*" == *" get service "* ]]; then cat "$state" 2>/dev/null || printf blue; fi\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "KUBECTL": str(fake), "NAMESPACE": "prod"}
    done = subprocess.run([SWITCH, "green"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "-n prod rollout status deployment/ferryman-green --timeout 300s"
    assert (
        '-n prod patch service ferryman --type strategic -p {"spec":{"selector":{"color":"green"}}}' in calls
    )
    assert "rollback:" in done.stderr and "switch.sh blue" in done.stderr
