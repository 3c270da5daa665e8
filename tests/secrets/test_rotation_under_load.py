"""A provider key rotated while `ferryman serve` is under steady load: no request fails, and once the
old key is revoked every request carries the new one. The key is a `file:` reference, as a Kubernetes
secret volume holds it; the refresh comes from SIGHUP, or from the interval."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from ferryman.testing import FakeOpenAI, HttpError
from tests.processes import gateway_process

OLD = "sk-live-old-0123456789abcdef"
NEW = "sk-live-new-fedcba9876543210"
CLIENTS = 8


class RotatingOpenAI(FakeOpenAI):
    """The provider's side of a rotation: a new key is issued while the old one still works, then the
    old one is revoked."""

    def __init__(self, *keys: str) -> None:
        super().__init__(api_key="no-single-key")
        self.accepted = frozenset(keys)

    def _authenticate(self, request: web.Request) -> HttpError | None:
        if request.headers.get("Authorization", "").removeprefix("Bearer ") in self.accepted:
            return None
        return super()._authenticate(request)


class SteadyLoad:
    """`CLIENTS` threads sending chat completions back to back until stopped; every outcome kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self) -> None:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "rotate me"}]}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                self.statuses.append(response.status_code)
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text}")


def sent_keys(fake: FakeOpenAI, start: int = 0) -> list[str]:
    return [r.headers.get("Authorization", "").removeprefix("Bearer ") for r in fake.requests[start:]]


def wait_for(condition: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def upstream() -> Iterator[RotatingOpenAI]:
    with RotatingOpenAI(OLD) as fake:
        yield fake


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["sighup", "interval"])
def test_a_key_rotated_under_load_fails_no_request(
    upstream: RotatingOpenAI, tmp_path: Path, trigger: str
) -> None:
    key_file = tmp_path / "openai-key"
    key_file.write_text(OLD + "\n")
    deployment = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": upstream.base_url,
        "api_key": f"file:{key_file}",
    }
    config = {
        "models": [{"name": "gpt-4o-mini", "deployments": [deployment]}],
        "retries": {"max_attempts_per_deployment": 1},  # a refused key would show, not be retried away
        "secrets": {"refresh_seconds": 0 if trigger == "sighup" else 0.5},
        "server": {"shutdown_delay_seconds": 0},
    }
    with gateway_process(config, tmp_path) as (process, url), SteadyLoad(url) as load:
        wait_for(lambda: len(load.statuses) >= 50)
        upstream.accepted = frozenset({OLD, NEW})  # the provider issues a new key beside the old one
        staged = key_file.with_name(".openai-key.new")
        staged.write_text(NEW + "\n")
        os.replace(staged, key_file)  # the kubelet swaps a secret volume's files in at once
        if trigger == "sighup":
            os.kill(process.pid, signal.SIGHUP)
        wait_for(lambda: NEW in sent_keys(upstream))
        time.sleep(0.3)  # requests that read the old key just before the swap finish
        upstream.accepted = frozenset({NEW})  # the old key is revoked
        revoked_at = len(upstream.requests)
        wait_for(lambda: len(upstream.requests) >= revoked_at + 100)
    assert load.failures == []
    assert set(load.statuses) == {200}
    after_revocation = sent_keys(upstream, revoked_at)
    assert len(after_revocation) >= 100
    assert set(after_revocation) == {NEW}
    log = "".join(path.read_text() for path in tmp_path.glob("gateway-*.log"))
    assert "secret rotated: models[0].deployments[0].api_key" in log
    assert OLD not in log and NEW not in log
