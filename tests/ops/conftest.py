"""Fixtures for the operations-kit tests: the command-line tools they drive, found or failed loudly."""

from __future__ import annotations

import shutil

import pytest

INSTALL_HINT = "run scripts/install-observability-tools.sh (as root) to install promtool and amtool"


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {INSTALL_HINT}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path to promtool (Debian package "prometheus"); the test fails, never skips, without it."""
    return _require_tool("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    """Path to amtool (Debian package "prometheus-alertmanager"); fails, never skips, without it."""
    return _require_tool("amtool")
