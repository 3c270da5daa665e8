"""Two gateway processes sharing PostgreSQL and Redis: a key revoked or rotated on one is refused by the
other within a second, although the other holds it in a 60-second cache."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.store.fixtures import free_port, fresh_postgres_database

MASTER = "two-process-master-key"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


class Replica:
    """One `python -m ferryman.cli serve` process on a free port."""

    def __init__(self, config: Path, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        command = [
            sys.executable,
            "-m",
            "ferryman.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(self.port),
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"replica exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"replica not ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def chat(self, key: str) -> int:
        headers = {"authorization": f"Bearer {key}"}
        return httpx.post(
            self.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10
        ).status_code

    def admin(self, method: str, path: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {MASTER}"}
        return httpx.request(method, self.url + path, json={} if method == "POST" else None, headers=headers)


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin: str, redis_url: str
) -> Iterator[tuple[Replica, Replica]]:
    with fresh_postgres_database(postgres_admin) as database_url:
        yield from _start_replicas(tmp_path_factory.mktemp("replicas"), database_url, redis_url)


def _start_replicas(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[tuple[Replica, Replica]]:
    config = {
        "master_key": MASTER,
        "database_url": database_url,
        "redis_url": redis_url,
        "key_cache_ttl_seconds": 60,  # so only the Redis notice can explain a quick refusal
        "server": {"shutdown_delay_seconds": 0},
        "logging": {"level": "WARNING"},
        "models": [{"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}],
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(config))
    a, b = Replica(path, tmp_path, "a"), Replica(path, tmp_path, "b")  # both migrate at once: the lock
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        a.stop()
        b.stop()


def refused_within(replica: Replica, key: str, seconds: float) -> float:
    """Poll until `replica` answers 401 for `key`; returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if replica.chat(key) == 401:
            return time.monotonic() - started
        time.sleep(0.02)
    pytest.fail(f"still accepted after {seconds}s")


def test_revocation_on_one_replica_reaches_the_other_within_a_second(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    created = a.admin("POST", "/admin/keys")
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert b.chat(key) == 200
    assert b.chat(key) == 200  # now served from B's cache
    assert a.admin("DELETE", f"/admin/keys/{created.json()['id']}").status_code == 200
    assert refused_within(b, key, 1.0) < 1.0


def test_rotation_on_one_replica_kills_the_old_secret_on_the_other(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    created = a.admin("POST", "/admin/keys").json()
    assert b.chat(created["key"]) == 200
    rotated = a.admin("POST", f"/admin/keys/{created['id']}/rotate").json()
    refused_within(b, created["key"], 1.0)
    assert b.chat(rotated["key"]) == 200
