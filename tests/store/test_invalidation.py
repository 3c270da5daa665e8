"""Invalidation notices on a real Redis that fails: retried, then reported, and the state kept for /health.

Each test runs its own `redis-server`, because the tests stop it (and start it again on the same port).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from ferryman.errors import InvalidationNotDeliveredError
from ferryman.store import invalidation
from ferryman.store.cache import GrantCache
from ferryman.store.invalidation import ALL_KEYS, CHANNEL, PUBLISH_RETRY_DELAYS, RedisInvalidation
from ferryman.store.records import KeyGrant
from ferryman.store.service import KeyService
from tests.processes import free_port
from tests.store.fixtures import throwaway_redis

DIGEST = "d" * 64


class RedisProcess:
    """A throwaway Redis that a test can stop and start again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._running = ExitStack()

    def start(self) -> None:
        self._running.enter_context(throwaway_redis(self.port))

    def stop(self) -> None:
        self._running.close()


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    process = RedisProcess()
    process.start()
    try:
        yield process
    finally:
        process.stop()


@asynccontextmanager
async def subscribed(url: str) -> AsyncIterator[PubSub]:
    """A second client listening on the notice channel, as another replica would."""
    client = Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscription confirmation
    try:
        yield pubsub
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def next_notice(pubsub: PubSub) -> str | None:
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    return None if message is None else message["data"].decode()


def cached(cache: GrantCache) -> GrantCache:
    cache.put(DIGEST, KeyGrant(key_id="k1", key_hash=DIGEST, alias=None), cache.generation)
    return cache


async def test_a_dropped_connection_is_ridden_out_by_a_retry(redis_process: RedisProcess) -> None:
    bus = await RedisInvalidation.connect(redis_process.url, GrantCache(), listen=False)
    admin = Redis.from_url(redis_process.url)
    try:
        async with subscribed(redis_process.url) as other_replica:
            await bus.publish("first")
            assert await next_notice(other_replica) == "first"
            # Redis restarts or a proxy times the idle connection out: the pooled connection is dead.
            await admin.client_kill_filter(_type="normal", skipme=True)
            await bus.publish(DIGEST)
            assert await next_notice(other_replica) == DIGEST
        assert bus.status.degraded is False
    finally:
        await admin.aclose()
        await bus.aclose()


async def test_a_notice_redis_refuses_is_reported_and_degraded_until_the_next_gets_through(
    redis_process: RedisProcess,
) -> None:
    cache = GrantCache()
    bus = await RedisInvalidation.connect(redis_process.url, cache, listen=False)
    try:
        await bus.publish("warm-up")
        redis_process.stop()
        cached(cache)
        started = time.monotonic()
        with pytest.raises(InvalidationNotDeliveredError) as refused:
            await bus.publish(DIGEST)
        assert time.monotonic() - started >= sum(PUBLISH_RETRY_DELAYS)  # it retried before giving up
        assert refused.value.status == 503 and refused.value.code == "invalidation_not_delivered"
        assert "saved" in refused.value.message and "key_cache_ttl_seconds" in refused.value.message
        assert cache.get(DIGEST) is None  # this replica forgot the key all the same
        assert bus.status.degraded is True
        assert bus.status.last_error == "ConnectionError"
        failed_at = bus.status.last_failure_at
        assert failed_at is not None

        redis_process.start()  # Redis is back, on the same port
        async with subscribed(redis_process.url) as other_replica:
            await bus.publish(DIGEST)
            assert await next_notice(other_replica) == DIGEST
        assert bus.status.degraded is False
        assert bus.status.last_failure_at == failed_at  # when it last failed stays on record
    finally:
        await bus.aclose()


async def test_when_redis_answers_again_every_replica_is_told_to_drop_its_cache(
    redis_process: RedisProcess,
) -> None:
    """The dependency check re-announces a lost change as "forget every key" once Redis is back."""
    cache = GrantCache()
    bus = await RedisInvalidation.connect(redis_process.url, cache, listen=False)
    service = KeyService(static={}, cache=cache, bus=bus)
    try:
        redis_process.stop()
        with pytest.raises(InvalidationNotDeliveredError):
            await bus.publish(DIGEST)
        assert await service.check_dependencies() == {"redis": False}
        assert service.invalidation.degraded is True
        redis_process.start()
        async with subscribed(redis_process.url) as other_replica:
            assert await service.check_dependencies() == {"redis": True}
            assert await next_notice(other_replica) == ALL_KEYS
        assert service.invalidation.degraded is False
        async with subscribed(redis_process.url) as other_replica:
            await service.check_dependencies()  # not degraded: nothing more is sent
            assert await next_notice(other_replica) is None
    finally:
        await service.aclose()


async def test_a_redis_that_never_answers_costs_a_bounded_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that accepts connections but never replies: each attempt times out; no admin hangs."""
    monkeypatch.setattr(invalidation, "PUBLISH_TIMEOUT", 0.2)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # hold the connection, say nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bus = RedisInvalidation(Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=None), GrantCache())
    try:
        started = time.monotonic()
        with pytest.raises(InvalidationNotDeliveredError):
            await bus.publish(DIGEST)
        assert time.monotonic() - started < 3 * 0.2 + sum(PUBLISH_RETRY_DELAYS) + 0.5
        assert bus.status.last_error == "TimeoutError"
    finally:
        await bus.aclose()
        server.close()
        await server.wait_closed()
