"""Open circuits in a real Redis: written, read back with the time left, closed, expired, and failing
as `SharedStateUnavailableError` when Redis is gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from ferryman.core.breaker import BreakerConfig, BreakerSync, CircuitBreaker
from ferryman.errors import SharedStateUnavailableError
from ferryman.store.redis_breaker import RedisCircuits
from tests.processes import free_port


@pytest.fixture
async def circuits(redis_url: str) -> AsyncIterator[RedisCircuits]:
    store = RedisCircuits.open(f"{redis_url}?prefix=test-breaker-{uuid.uuid4().hex}")
    yield store
    await store.clear()
    await store.aclose()


async def test_an_open_circuit_is_read_back_with_the_time_left(circuits: RedisCircuits) -> None:
    assert await circuits.open_circuits() == {}
    await circuits.publish({"openai/gpt-4o": 30.0, "b": 5.0}, set())
    open_for = await circuits.open_circuits()
    assert set(open_for) == {"openai/gpt-4o", "b"}
    assert 29.0 < open_for["openai/gpt-4o"] <= 30.0
    assert 4.0 < open_for["b"] <= 5.0


async def test_a_closed_circuit_is_gone_and_an_expired_one_is_ignored(circuits: RedisCircuits) -> None:
    await circuits.publish({"a": 30.0, "b": 0.05}, set())
    await circuits.publish({}, {"a"})
    await asyncio.sleep(0.1)
    assert await circuits.open_circuits() == {}


async def test_two_breakers_share_an_opening_through_redis(circuits: RedisCircuits) -> None:
    config = BreakerConfig(failure_threshold=2, cooldown_seconds=20)
    one, other = CircuitBreaker(config), CircuitBreaker(config)
    sync_one, sync_other = BreakerSync(one, circuits), BreakerSync(other, circuits)
    one.record_failure("a")
    one.record_failure("a")
    await sync_one.sync_once()
    await sync_other.sync_once()
    view = other.view("a")
    assert view.state == "open" and view.retry_in_seconds is not None and view.retry_in_seconds > 19


async def test_an_unreachable_redis_is_a_shared_state_error() -> None:
    store = RedisCircuits.open(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(SharedStateUnavailableError):
            await store.open_circuits()
        with pytest.raises(SharedStateUnavailableError):
            await store.publish({"a": 1.0}, set())
    finally:
        await store.aclose()
