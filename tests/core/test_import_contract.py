"""The core imports no framework: no web server, HTTP client, database, Redis, metrics or tracing library,
and none of the outer layers of the package. Checked on the source (direct imports, however written)
and on a fresh interpreter (nothing forbidden loaded, even indirectly)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import ferryman.core

CORE = Path(ferryman.core.__file__).parent
FORBIDDEN = (
    "starlette",
    "fastapi",
    "uvicorn",
    "aiohttp",
    "httpx",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "alembic",
    "redis",
    "prometheus_client",
    "opentelemetry",
    "pydantic",
    "ferryman.api",
    "ferryman.providers",
    "ferryman.store",
    "ferryman.observability",
    "ferryman.settings",
    "ferryman.wire",
    "ferryman.testing",
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def _forbidden(name: str) -> bool:
    return any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN)


def test_no_core_module_imports_a_framework_or_an_outer_layer() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) > 5
    offenders = {f"{path.name}: {name}" for path in modules for name in _imports(path) if _forbidden(name)}
    assert not offenders, f"core imports what it must not: {sorted(offenders)}"


def test_importing_all_of_core_loads_nothing_forbidden() -> None:
    modules = [f"ferryman.core.{path.stem}" for path in sorted(CORE.glob("*.py")) if path.stem != "__init__"]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = json.loads(result.stdout)
    assert "ferryman.core.pipeline" in loaded
    assert not [name for name in loaded if _forbidden(name)]


def test_the_checker_catches_each_way_of_importing(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import redis\nfrom opentelemetry.trace import Span\nimport importlib\n"
        "importlib.import_module('httpx')\nfrom ferryman.store import memory\n"
    )
    found = {name for name in _imports(sample) if _forbidden(name)}
    assert found == {"redis", "opentelemetry.trace", "httpx", "ferryman.store"}
