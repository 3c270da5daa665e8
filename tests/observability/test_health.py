"""Probes and graceful shutdown, on a real process: readiness fails first, in-flight streams finish."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryman import __version__
from ferryman.testing import FakeOpenAI, Reply
from tests.conftest import RunningGateway
from tests.processes import free_port, gateway_process

FREE = {"input_per_mtok": 0, "output_per_mtok": 0}


def test_live_ready_and_summary(gateway_factory: Any) -> None:
    gateway: RunningGateway = gateway_factory(
        {"models": [{"name": "m", "deployments": [{"provider": "fake", "model": "m", "price": FREE}]}]}
    )
    assert httpx.get(gateway.url + "/health/live", timeout=5).json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/health/ready", timeout=5).json() == {
        "status": "ready",
        "dependencies": {"database": True},  # the embedded SQLite database
    }
    summary = httpx.get(gateway.url + "/health", timeout=5).json()
    assert summary["status"] == "ok"
    assert summary["version"] == __version__
    assert summary["uptime_seconds"] >= 0
    assert summary["redis"] == "not configured"
    assert summary["database"] == "up"
    (deployment,) = summary["deployments"]
    assert deployment["state"] == "unknown"  # no traffic yet
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=5)
    (deployment,) = httpx.get(gateway.url + "/health", timeout=5).json()["deployments"]
    assert deployment == {
        "model": "m",
        "deployment": "fake/m",
        "provider": "fake",
        "state": "healthy",
        "circuit": "closed",
        "successes": 1,
        "failures": 0,
        "consecutive_failures": 0,
        "last_error": None,
    }


def test_a_deployment_that_keeps_failing_shows_as_failing(gateway_factory: Any) -> None:
    refused = {"provider": "openai", "model": "gpt-4o-mini", "api_base": f"http://127.0.0.1:{free_port()}/v1"}
    # one attempt per deployment: each scripted fault is counted as it happens (retries: test_resilience.py)
    config = {
        "models": [{"name": "gpt", "deployments": [refused]}],
        "retries": {"max_attempts_per_deployment": 1},
    }
    gateway: RunningGateway = gateway_factory(config)
    body = {"model": "gpt", "messages": [{"role": "user", "content": "x"}]}
    states = []
    for _ in range(3):
        httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=5)
        (deployment,) = httpx.get(gateway.url + "/health", timeout=5).json()["deployments"]
        states.append(deployment["state"])
    assert states == ["degraded", "degraded", "failing"]
    assert deployment["last_error"] == "connection"
    assert deployment["consecutive_failures"] == 3


def test_readiness_fails_while_draining(gateway_factory: Any) -> None:
    gateway: RunningGateway = gateway_factory(
        {"models": [{"name": "m", "deployments": [{"provider": "fake", "model": "m", "price": FREE}]}]}
    )
    gateway.state.draining = True
    assert httpx.get(gateway.url + "/health/ready", timeout=5).status_code == 503
    assert httpx.get(gateway.url + "/health/live", timeout=5).status_code == 200
    assert httpx.get(gateway.url + "/health", timeout=5).json()["status"] == "draining"


def test_sigterm_drains_in_flight_stream_then_exits_zero(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        fake.script.reply(Reply.text(" ".join(f"w{i}" for i in range(12)), chunks=12, chunk_delay=0.25))
        config = {
            "server": {"shutdown_delay_seconds": 1.0, "drain_timeout_seconds": 10},
            "models": [
                {
                    "name": "gpt",
                    "deployments": [
                        {
                            "provider": "openai",
                            "model": "gpt-4o-mini",
                            "api_base": fake.base_url,
                            "api_key": "k",
                        }
                    ],
                }
            ],
        }
        with gateway_process(config, tmp_path) as (process, url):
            received: list[str] = []

            def read_stream() -> None:
                body = {"model": "gpt", "stream": True, "messages": [{"role": "user", "content": "x"}]}
                with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=20) as response:
                    received.extend(response.iter_lines())

            reader = threading.Thread(target=read_stream)
            reader.start()
            time.sleep(0.5)  # the stream is under way
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            assert httpx.get(url + "/health/ready", timeout=2).status_code == 503
            assert httpx.get(url + "/health/live", timeout=2).status_code == 200
            time.sleep(1.5)  # past the shutdown delay: the listener is closed
            with pytest.raises(httpx.ConnectError):
                httpx.get(url + "/health/live", timeout=2)
            reader.join(timeout=15)
            assert process.wait(timeout=15) == 0
    assert "data: [DONE]" in received
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in received
        if line.startswith("data: {") and '"choices":[{' in line
    )
    assert text == " ".join(f"w{i}" for i in range(12))
    log = next(tmp_path.glob("gateway-*.log")).read_text()
    access = [json.loads(line) for line in log.splitlines() if '"ferryman.access"' in line]
    assert [(a["stream"], a["status"]) for a in access] == [(True, "success")]
