"""docs/runbook.md and docs/incidents.md: a section per alert, PromQL that parses, links that resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .metric_names import ALERTS_FILE, REPO_ROOT

DOCS = REPO_ROOT / "docs"
RUNBOOK = DOCS / "runbook.md"
SUBSECTIONS = ("### What it means", "### How to confirm", "### How to mitigate")
_PROMQL_BLOCK = re.compile(r"```promql\n(.*?)```", flags=re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _alert_names() -> list[str]:
    document = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    return [rule["alert"] for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def _sections(markdown: str) -> dict[str, str]:
    """Level-2 sections of a markdown page, keyed by heading text."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    return {parts[index].strip(): parts[index + 1] for index in range(1, len(parts), 2)}


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("alert", _alert_names())
def test_runbook_section_says_what_it_means_how_to_confirm_and_mitigate(alert: str) -> None:
    section = _sections(RUNBOOK.read_text(encoding="utf-8")).get(alert)
    assert section is not None, f"docs/runbook.md has no '## {alert}' section"
    positions = [section.find(subsection) for subsection in SUBSECTIONS]
    assert all(position >= 0 for position in positions), f"{alert}: missing one of {SUBSECTIONS}"
    assert positions == sorted(positions), f"{alert}: subsections out of order"


def test_runbook_promql_snippets_parse(promtool: str, tmp_path: Path) -> None:
    snippets = _PROMQL_BLOCK.findall(RUNBOOK.read_text(encoding="utf-8"))
    assert len(snippets) >= len(_alert_names())
    rules = [{"record": f"runbook:query_{index}", "expr": snippet} for index, snippet in enumerate(snippets)]
    rules_file = tmp_path / "runbook_queries.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "runbook", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("page", ["runbook.md", "incidents.md"])
def test_relative_links_resolve(page: str) -> None:
    markdown = (DOCS / page).read_text(encoding="utf-8")
    for target in _LINK.findall(markdown):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (DOCS / path) if path else DOCS / page
        assert linked.is_file(), f"{page}: broken link {target}"
        if anchor:
            anchors = {_github_anchor(heading) for heading in _sections(linked.read_text(encoding="utf-8"))}
            assert anchor in anchors, f"{page}: no section for #{anchor} in {linked.name}"
