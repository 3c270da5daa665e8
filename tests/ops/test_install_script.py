"""scripts/install-observability-tools.sh: valid bash, and a no-op when the tools are already there."""

from __future__ import annotations

import subprocess

from .metric_names import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "install-observability-tools.sh"


def test_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_script_returns_at_once_when_promtool_and_amtool_are_installed(promtool: str, amtool: str) -> None:
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False, timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "promtool and amtool already installed"
