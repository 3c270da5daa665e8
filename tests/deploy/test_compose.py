"""docker-compose.yml is valid Compose Specification and wires the gateway, its stores and observability."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._manifests import ROOT, run, tool

COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]


def test_valid_against_the_compose_specification_schema() -> None:
    # check-jsonschema ships the Compose Specification's schema as vendor.compose-spec
    # (taken from the compose-spec/compose-spec repository, pinned by the package version).
    out = run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", ROOT / "docker-compose.yml"]
    )
    assert "ok -- validation done" in out


def test_the_schema_check_rejects_an_unknown_key(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  web:\n    image: x\n    restart_policy: always\n")
    checker = [str(tool("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(bad)]
    done = subprocess.run(checker, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "restart_policy" in done.stdout


def test_core_services_start_without_a_profile() -> None:
    core = {name for name, svc in SERVICES.items() if "profiles" not in svc}
    assert core == {"ferryman", "redis", "postgres"}


def test_observability_profile_adds_the_monitoring_stack() -> None:
    profiled = {name for name, svc in SERVICES.items() if "observability" in svc.get("profiles", [])}
    assert profiled == {"prometheus", "alertmanager", "grafana", "jaeger"}


def test_redis_persists_with_append_only_file() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-data" in COMPOSE["volumes"]


def test_postgres_persists_its_data() -> None:
    postgres = SERVICES["postgres"]
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "postgres-data" in COMPOSE["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_gateway_waits_for_healthy_stores_and_reaches_them_by_name() -> None:
    gateway = SERVICES["ferryman"]
    assert gateway["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    env = gateway["environment"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert (
        env["DATABASE_URL"].startswith("postgresql+asyncpg://ferryman:")
        and "@postgres:5432/" in env["DATABASE_URL"]
    )
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith("http://jaeger:4318}")
    assert "4318:4318" in SERVICES["jaeger"]["ports"]


def test_gateway_is_hardened_and_drains_before_sigkill() -> None:
    gateway = SERVICES["ferryman"]
    assert gateway["read_only"] is True
    assert gateway["tmpfs"] == ["/tmp"]  # noqa: S108 - a path inside the container
    assert gateway["cap_drop"] == ["ALL"]
    assert gateway["security_opt"] == ["no-new-privileges:true"]
    assert gateway["stop_grace_period"] == "45s"
    assert "/health/live" in " ".join(gateway["healthcheck"]["test"])
    assert "curl" not in " ".join(gateway["healthcheck"]["test"])


def test_prometheus_scrapes_the_gateway_service_name() -> None:
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    [job] = [job for job in scrape["scrape_configs"] if job["job_name"] == "ai-api"]
    targets = {t for config in job["static_configs"] for t in config["targets"]}
    assert "ferryman:8000" in targets


def test_grafana_mounts_dashboards_where_its_provider_looks() -> None:
    provider_file = ROOT / "deploy/grafana/provisioning/dashboards/ferryman.yaml"
    [provider] = yaml.safe_load(provider_file.read_text(encoding="utf-8"))["providers"]
    mounts = dict(v.split(":")[:2] for v in SERVICES["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_bind_mount_source_exists(service: str) -> None:
    for volume in SERVICES[service].get("volumes", []):
        source = volume.split(":", 1)[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{service} mounts missing {source}"


def test_every_variable_is_in_env_example_without_a_value() -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", example, flags=re.MULTILINE))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_TEXT))
    assert used <= set(listed), f"missing from .env.example: {sorted(used - set(listed))}"
    uncommented = re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example, flags=re.MULTILINE)
    assert all(value == "" for _, value in uncommented), "the example must hold no values"
