"""Exact limits across replicas: three gateway processes sharing one real Redis admit exactly the limit,
and a Redis that dies mid-load is survived as the failure policy says, then recovered from."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryman.testing import FakeOpenAI, Reply
from tests.api.fleet import burst, openai_estimate
from tests.api.replicas import gateway_processes
from tests.processes import gateway_process
from tests.store.fixtures import throwaway_redis, throwaway_redis_process
from tests.store.redis_topologies import redis_cluster, redis_sentinel

pytestmark = pytest.mark.slow
KEY = "fm-replicated-key"
RPM_KEY, TPM_KEY, PARALLEL_KEY = (
    "fm-replicated-rpm-key",
    "fm-replicated-tpm-key",
    "fm-replicated-parallel-key",
)
BODY: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "count me in"}]}


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[FakeOpenAI]:
    """Answers after 2 s, so every admission of a burst happens before any request settles."""
    with FakeOpenAI() as fake:
        fake.script.set_default(Reply.echo(delay=2.0))
        yield fake


def replica_config(redis_url: str, upstream: FakeOpenAI, **key: Any) -> dict[str, Any]:
    deployment = {"provider": "openai", "model": "gpt-4o-mini", "api_base": upstream.base_url, "api_key": "k"}
    return {
        "redis_url": redis_url,
        "data_dir": ":memory:",
        "server": {"shutdown_delay_seconds": 0},
        "limits": {"expected_replicas": 3},
        "keys": [{"alias": "replicated", "key": KEY, **key}],
        "models": [{"name": "chat", "deployments": [deployment]}],
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, slow_upstream: FakeOpenAI) -> Iterator[list[str]]:
    """Three replicas on one throwaway Redis for the exactness tests on a single Redis: each test has a
    key of its own with only the limit it measures, so no test sees another's admissions, and the fleet
    starts once for all of them."""
    keys = [
        {"alias": "rpm", "key": RPM_KEY, "rpm_limit": 100},
        {"alias": "tpm", "key": TPM_KEY, "tpm_limit": 40 * openai_estimate(BODY)},  # as the gateway counts
        {"alias": "parallel", "key": PARALLEL_KEY, "max_parallel": 10},
    ]
    with throwaway_redis() as redis_url:
        config = {**replica_config(redis_url, slow_upstream), "keys": keys}
        with replicas(config, tmp_path_factory.mktemp("fleet")) as urls:
            yield urls


@contextlib.contextmanager
def replicas(config: dict[str, Any], tmp_path: Path, count: int = 3) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [url for _, url in gateway_processes(stack, config, tmp_path, count)]


async def statuses_of(urls: list[str], total: int, key: str = KEY) -> Counter[int]:
    """`total` requests at once, spread round-robin over the replicas; their status codes, counted."""
    return Counter(response.status_code for response in await burst(urls, BODY, key, total))


def test_three_replicas_admit_exactly_the_requests_per_minute(fleet: list[str]) -> None:
    statuses = asyncio.run(statuses_of(fleet, 300, key=RPM_KEY))
    assert statuses == Counter({200: 100, 429: 200})


def test_three_replicas_admit_exactly_the_tokens_per_minute(fleet: list[str]) -> None:
    statuses = asyncio.run(statuses_of(fleet, 150, key=TPM_KEY))
    assert statuses == Counter({200: 40, 429: 110})


def test_three_replicas_hold_exactly_max_parallel(fleet: list[str]) -> None:
    statuses = asyncio.run(statuses_of(fleet, 120, key=PARALLEL_KEY))
    assert statuses == Counter({200: 10, 429: 110})


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_the_same_exactness_on_redis_cluster_and_through_sentinel(
    tmp_path: Path, slow_upstream: FakeOpenAI, topology: str
) -> None:
    topologies = {"cluster": redis_cluster, "sentinel": redis_sentinel}
    with (
        topologies[topology]() as redis_url,
        replicas(replica_config(redis_url, slow_upstream, rpm_limit=50), tmp_path) as urls,
    ):
        statuses = asyncio.run(statuses_of(urls, 150))
    assert statuses == Counter({200: 50, 429: 100})


@pytest.mark.parametrize(("policy", "while_down"), [("fail_open", 200), ("fail_closed", 503)])
def test_a_redis_killed_mid_load_is_survived_then_recovered(
    tmp_path: Path, policy: str, while_down: int
) -> None:
    with FakeOpenAI() as upstream, contextlib.ExitStack() as stack:
        upstream.script.set_default(Reply.echo(delay=0.3))  # requests are in flight when Redis dies
        redis_url, redis_process = stack.enter_context(throwaway_redis_process())
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        config = replica_config(redis_url, upstream, rpm_limit=5)
        config["keys"].append({"alias": "busy", "key": "fm-busy", "rpm_limit": 100_000})
        config["limits"] = {"on_redis_failure": policy}  # one replica: its local share is the whole limit
        config["health"] = {"required": ["database"]}
        _, url = stack.enter_context(gateway_process(config, tmp_path))
        assert asyncio.run(statuses_of([url], 3)) == Counter({200: 3})

        async def kill_in_the_middle() -> Counter[int]:
            load = asyncio.create_task(statuses_of([url], 60, key="fm-busy"))
            await asyncio.sleep(0.15)
            redis_process.send_signal(signal.SIGKILL)
            return await load

        during = asyncio.run(kill_in_the_middle())
        redis_process.wait(timeout=10)
        if policy == "fail_open":
            assert during == Counter({200: 60}), during  # no client saw the outage
        down = asyncio.run(statuses_of([url], 4))
        assert down == Counter({while_down: 4}), down
        ready = httpx.get(url + "/health/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        expected = {
            "fail_open": "local share (Redis unreachable)",
            "fail_closed": "refusing (Redis unreachable)",
        }
        assert httpx.get(url + "/health").json()["rate_limits"] == expected[policy]
        stack.enter_context(throwaway_redis(port))  # Redis is back, empty
        # The limiter tries Redis again a second after its last failure; the first call back may still
        # find a connection the old server closed (answered by the local share, and the next try a
        # second later), so another key's traffic brings it back before exactness is checked.
        for _ in range(5):
            asyncio.run(asyncio.sleep(1.2))
            asyncio.run(statuses_of([url], 1, key="fm-busy"))
            if httpx.get(url + "/health").json()["rate_limits"] == "shared":
                break
        assert asyncio.run(statuses_of([url], 8)) == Counter({200: 5, 429: 3})
