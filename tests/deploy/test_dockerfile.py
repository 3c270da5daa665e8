"""The Dockerfile passes hadolint; its image is small, non-root, read-only friendly, with a healthcheck."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml

from tests.deploy._manifests import ROOT, run, tool

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _instructions(keyword: str) -> list[str]:
    """Arguments of every instruction with this keyword (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{keyword}\s+(.*)$", joined, flags=re.MULTILINE)]


def test_hadolint_reports_nothing() -> None:
    out = run([tool("hadolint"), "--config", ROOT / ".hadolint.yaml", ROOT / "Dockerfile"])
    assert out == ""


def test_every_ignored_hadolint_rule_carries_a_reason() -> None:
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text(encoding="utf-8"))
    assert config["failure-threshold"] == "info"
    lines = (ROOT / ".hadolint.yaml").read_text(encoding="utf-8").splitlines()
    for rule in config.get("ignored") or []:
        [line] = [
            line for line in lines if re.search(rf"\b{rule}\b", line) and not line.lstrip().startswith("#")
        ]
        assert "#" in line and line.split("#", 1)[1].strip(), f"{rule} is ignored without a reason"


def test_multi_stage_with_a_slim_base() -> None:
    stages = _instructions("FROM")
    assert len(stages) >= 2
    assert re.search(r"python:3\.11-slim", DOCKERFILE)
    assert "COPY --from=build /opt/ferryman /opt/ferryman" in DOCKERFILE


def test_runs_as_a_numeric_non_root_user() -> None:
    user = _instructions("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000


def test_tini_is_pid_1_and_forwards_signals_to_the_gateway() -> None:
    entrypoint = json.loads(_instructions("ENTRYPOINT")[-1])
    assert entrypoint == ["tini", "--", "ferryman"]
    command = json.loads(_instructions("CMD")[-1])
    assert command[:3] == ["serve", "--config", "/etc/ferryman/config.yaml"]
    assert "COPY deploy/docker/config.yaml /etc/ferryman/config.yaml" in DOCKERFILE
    assert _instructions("EXPOSE") == ["8000"]
    assert _instructions("STOPSIGNAL") == ["SIGTERM"]


def test_nothing_writes_bytecode_into_the_read_only_root() -> None:
    assert "PYTHONDONTWRITEBYTECODE=1" in _instructions("ENV")[-1]
    assert "compileall" in DOCKERFILE


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*", "allow-list: exclude everything first"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "README.md", "src", "deploy/docker/config.yaml"} <= allowed
    assert not allowed & {".env", ".venv", ".git", ".tools", "tests"}


class _Probe(BaseHTTPRequestHandler):
    """Answers /health/live with the status the test sets on the server."""

    def do_GET(self) -> None:
        status = 200 if self.path == "/health/live" and self.server.alive else 503  # type: ignore[attr-defined]
        self.send_response(status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads exit codes, not access logs."""


@pytest.fixture
def health_server() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("alive", "healthy"), [(True, True), (False, False)])
def test_healthcheck_command_follows_the_liveness_probe(
    health_server: HTTPServer, alive: bool, healthy: bool
) -> None:
    healthcheck = _instructions("HEALTHCHECK")[0]
    assert "curl" not in healthcheck and "wget" not in healthcheck
    argv = json.loads(healthcheck.split("CMD", 1)[1])
    assert argv[:2] == ["python", "-c"]
    port = health_server.server_address[1]
    code = argv[2].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    assert code != argv[2], "the healthcheck must target 127.0.0.1:8000"
    health_server.alive = alive  # type: ignore[attr-defined]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=10, check=False)
    assert (done.returncode == 0) is healthy
