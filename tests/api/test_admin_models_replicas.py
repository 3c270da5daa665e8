"""A model added through one replica's admin API serves on another within 2 s: two gateway processes
on one real PostgreSQL database and Redis (the `models` notice on the invalidation channel), and two on
one database without Redis (each replica's poll of the catalog version)."""

from __future__ import annotations

import base64
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryman.testing import FakeOpenAI
from tests.processes import gateway_process

pytestmark = pytest.mark.slow
MASTER = "models-replicas-master"
HEADERS = {"authorization": f"Bearer {MASTER}"}
UPSTREAM_KEY = "sk-replicas-credential-Zk3P"


def replica_config(database_url: str, redis_url: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "master_key": MASTER,
        "database_url": database_url,
        "server": {"shutdown_delay_seconds": 0},
        "models": [{"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}],
    }
    if redis_url is not None:
        config["redis_url"] = f"{redis_url}?prefix=models-{uuid.uuid4().hex}"
    return config


def seconds_until_served(replica_a: str, replica_b: str, fake: FakeOpenAI, name: str) -> float:
    """Add `name` on A, then ask B until it answers; the seconds from A's 201 to B's first 200."""
    body = {
        "name": name,
        "deployments": [
            {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "api_base": fake.base_url,
                "api_key": UPSTREAM_KEY,
                "price": {"input_per_mtok": 0, "output_per_mtok": 0},
            }
        ],
    }
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(headers=HEADERS, timeout=10) as client:
        assert client.post(f"{replica_b}/v1/chat/completions", json=chat).status_code == 404
        created = client.post(f"{replica_a}/admin/models", json=body)
        assert created.status_code == 201, created.text
        added = time.monotonic()
        while (status := client.post(f"{replica_b}/v1/chat/completions", json=chat).status_code) != 200:
            assert status == 404, status
            assert time.monotonic() - added < 5, "replica B never served the new model"
            time.sleep(0.02)
        return time.monotonic() - added


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "database-poll"])
def test_a_model_added_on_one_replica_serves_on_the_other_within_two_seconds(
    tmp_path: Path, postgres_database: str, redis_url: str, with_redis: bool
) -> None:
    config = replica_config(postgres_database, redis_url if with_redis else None)
    env = {"FERRYMAN_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode()}
    with (
        FakeOpenAI(api_key=UPSTREAM_KEY) as fake,
        gateway_process(config, tmp_path, env=env) as (_, replica_a),
        gateway_process(config, tmp_path, env=env) as (_, replica_b),
    ):
        elapsed = seconds_until_served(replica_a, replica_b, fake, "added-on-a")
        assert elapsed < 2.0, f"replica B served the model {elapsed:.2f} s after it was added"
        assert fake.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        with httpx.Client(headers=HEADERS, timeout=10) as client:
            assert client.delete(f"{replica_b}/admin/models/added-on-a").status_code == 200
            chat = {"model": "added-on-a", "messages": [{"role": "user", "content": "hi"}]}
            deadline = time.monotonic() + 2.0
            while client.post(f"{replica_a}/v1/chat/completions", json=chat).status_code != 404:
                assert time.monotonic() < deadline, "replica A kept serving a deleted model"
                time.sleep(0.02)
