"""The deployment docs point at files and sections that exist, and the architecture page has its diagrams."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy._manifests import ROOT

DOCS = ["deployment.md", "blue-green.md", "capacity.md", "architecture.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:deploy|scripts|\.github)/[^`\s]*)`")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(markdown: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("name", DOCS)
def test_every_relative_link_and_anchor_resolves(name: str) -> None:
    page = ROOT / "docs" / name
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part) if path_part else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{name}: broken links {broken}"


@pytest.mark.parametrize("name", DOCS)
def test_every_repository_path_named_in_code_exists(name: str) -> None:
    text = (ROOT / "docs" / name).read_text(encoding="utf-8")
    missing = [p for p in CODE_PATH.findall(text) if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"{name} names paths that do not exist: {missing}"


def test_architecture_draws_the_request_path_and_the_deployment() -> None:
    text = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    diagrams = re.findall(r"```mermaid\n(.*?)```", text, flags=re.DOTALL)
    assert len(diagrams) >= 2
    request_path, deployment = diagrams[0], diagrams[1]
    for stage in ("Authenticate", "Rate limits", "Budget reservation", "Choose deployment", "spend ledger"):
        assert stage in request_path
    for part in ("LoadBalancer", "HPA 2-10", "Redis", "PostgreSQL", "Prometheus", "Alertmanager"):
        assert part.lower() in deployment.lower()


def test_capacity_figures_come_from_the_benchmark_results() -> None:
    """Every measured figure in capacity.md's per-replica table is one the benchmark's results hold:
    CPU per request (`1.234 ms`), overhead (`+1.23 ms`) and requests/s (`881/s`)."""
    capacity = (ROOT / "docs/capacity.md").read_text(encoding="utf-8")
    results = (ROOT / "bench/RESULTS.md").read_text(encoding="utf-8")
    assert "TODO" not in capacity and "bench/RESULTS.md" in capacity
    table = capacity.split("## Per-replica throughput", 1)[1].split("\n## ", 1)[0]
    figures = re.findall(r"(?<![\d.])(\d+\.\d{3}) ms|(\+\d+\.\d{2}) ms|([\d,]+)/s", table)
    measured = [next(part for part in groups if part) for groups in figures]
    assert len(measured) >= 7, measured  # three workloads: CPU and overhead each, and one rate
    for figure in measured:
        assert figure in results, figure


def test_anchor_slugs_follow_github() -> None:
    assert _slug("Kubernetes with Helm") == "kubernetes-with-helm"
    assert _slug("CI/CD") == "cicd"
    assert _slug("HighLatency") == "highlatency"
