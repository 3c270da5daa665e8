"""Dependency health: Redis and the database watched in the background, readiness as configured."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway
from tests.processes import free_port
from tests.store.fixtures import reachable

MODELS = [
    {
        "name": "m",
        "deployments": [
            {"provider": "fake", "model": "m", "price": {"input_per_mtok": 0, "output_per_mtok": 0}}
        ],
    }
]


@pytest.fixture
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server this test owns, so it may stop it."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not reachable("127.0.0.1", port):
        assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    yield process, f"redis://127.0.0.1:{port}/0"
    if process.poll() is None:
        process.terminate()
    process.wait(timeout=10)


def config(tmp_path: Path, redis_url: str, **health: Any) -> dict[str, Any]:
    return {
        "master_key": "fm-master-0123456789",
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/keys.db",
        "redis_url": redis_url,
        "health": {"check_interval_seconds": 0.1, **health},
        "models": MODELS,
    }


def gauge(gateway: RunningGateway, dependency: str) -> float:
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith(f'ai_api_dependency_up{{dependency="{dependency}"}}')
    )
    return float(line.split()[-1])


def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_dependencies_up_then_redis_down_is_degraded_but_ready(
    gateway_factory: Any, tmp_path: Path, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, redis_url = own_redis
    gateway: RunningGateway = gateway_factory(config(tmp_path, redis_url))
    ready = httpx.get(gateway.url + "/health/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["dependencies"] == {"database": True, "redis": True}
    summary = httpx.get(gateway.url + "/health", timeout=5).json()
    assert (summary["status"], summary["database"], summary["redis"]) == ("ok", "up", "up")
    assert gauge(gateway, "redis") == 1 and gauge(gateway, "database") == 1

    process.terminate()
    process.wait(timeout=10)
    wait_for(lambda: gauge(gateway, "redis") == 0)
    summary = httpx.get(gateway.url + "/health", timeout=5).json()
    assert (summary["status"], summary["redis"]) == ("degraded", "down (degraded mode)")
    ready = httpx.get(gateway.url + "/health/ready", timeout=5)
    assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
    assert gauge(gateway, "database") == 1


def test_a_required_dependency_down_makes_the_replica_unready(
    gateway_factory: Any, tmp_path: Path, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, redis_url = own_redis
    gateway: RunningGateway = gateway_factory(config(tmp_path, redis_url, required=["database", "redis"]))
    assert httpx.get(gateway.url + "/health/ready", timeout=5).status_code == 200
    process.terminate()
    process.wait(timeout=10)
    wait_for(lambda: httpx.get(gateway.url + "/health/ready", timeout=5).status_code == 503)
    summary = httpx.get(gateway.url + "/health", timeout=5)
    assert summary.status_code == 503
    assert (summary.json()["status"], summary.json()["redis"]) == ("unready", "down")
    assert httpx.get(gateway.url + "/health/live", timeout=5).status_code == 200
