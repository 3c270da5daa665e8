"""The documentation keeps up with the code: every config key documented, every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from ferryman.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def config_keys(model: type[BaseModel]) -> set[str]:
    """Every field name in the settings tree, nested models included."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(field.alias or name)  # as config files spell it (`global`, not `global_`)
        for candidate in _model_types(field.annotation):
            keys |= config_keys(candidate)
    return keys


def _model_types(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [t for arg in getattr(annotation, "__args__", ()) for t in _model_types(arg)]


def test_every_config_key_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([a-z_]+)`", text))
    missing = config_keys(Settings) - documented
    assert not missing, f"undocumented config keys: {sorted(missing)}"


def test_relative_links_in_markdown_resolve() -> None:
    broken: list[str] = []
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for path in files:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} → {target}")
    assert not broken, "broken links: " + ", ".join(broken)


def test_readme_references_every_deployment_file_and_doc() -> None:
    readme = (ROOT / "README.md").read_text()
    expected = [
        "Dockerfile",
        ".dockerignore",
        "docker-compose.yml",
        ".env.example",
        "deploy/helm/ferryman",
        "deploy/prometheus/alerts.yaml",
        "deploy/alertmanager/alertmanager.yml",
        "deploy/grafana",
        *(
            f"deploy/k8s/{p.name}"
            for p in (ROOT / "deploy/k8s").iterdir()
            if p.is_dir() and p.name != "components"
        ),
        *(f".github/workflows/{p.name}" for p in (ROOT / ".github/workflows").glob("*.yml")),
        *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
    ]
    missing = [path for path in expected if f"]({path})" not in readme]
    assert not missing, f"README does not link: {missing}"
