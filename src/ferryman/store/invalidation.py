"""Telling every replica to forget a cached key: Redis pub/sub when configured, else this process only.

A notice is a key hash, or `*` for "forget every key" (a team changed). Each replica subscribes in its
lifespan; whenever the subscription is (re)established the whole cache is dropped, because notices sent
while it was down are lost. Without Redis, other replicas catch up when their cache TTL runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ferryman.store.cache import GrantCache

CHANNEL = "ferryman:keys:invalidate"
ALL_KEYS = "*"

log = logging.getLogger("ferryman.store.invalidation")


class InvalidationBus(Protocol):
    """Where admin operations announce that a key (or every key) changed."""

    async def publish(self, notice: str) -> None:
        """Drop `notice` (a key hash or `*`) here and, if shared, on every other replica."""
        ...

    async def aclose(self) -> None:
        """Stop listening and release connections."""
        ...


def apply_notice(cache: GrantCache, notice: str) -> None:
    """Act on one notice."""
    if notice == ALL_KEYS:
        cache.clear()
    else:
        cache.invalidate(notice)


class LocalInvalidation:
    """No Redis: only this process learns at once; the cache TTL bounds everyone else's staleness."""

    def __init__(self, cache: GrantCache) -> None:
        self._cache = cache

    async def publish(self, notice: str) -> None:
        """Drop the entry locally."""
        apply_notice(self._cache, notice)

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisInvalidation:
    """Publishes notices on `ferryman:keys:invalidate` and applies every notice it hears."""

    def __init__(self, redis: Redis, cache: GrantCache) -> None:
        self._redis = redis
        self._cache = cache
        self._subscribed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, url: str, cache: GrantCache, *, listen: bool, wait: float = 5.0
    ) -> RedisInvalidation:
        """Connect; with `listen`, subscribe and wait (up to `wait` s) until the subscription is live."""
        bus = cls(Redis.from_url(url), cache)
        if listen:
            bus._listener = asyncio.create_task(bus._listen(), name="ferryman-key-invalidation")
            try:
                await asyncio.wait_for(bus._subscribed.wait(), wait)
            except TimeoutError:
                log.warning("key invalidation: not subscribed yet; still retrying in the background")
        return bus

    async def publish(self, notice: str) -> None:
        """Apply locally first, then tell the other replicas (a Redis failure is logged, not raised)."""
        apply_notice(self._cache, notice)
        try:
            await self._redis.publish(CHANNEL, notice)
        except (RedisError, OSError) as exc:
            log.error("key invalidation not published; other replicas catch up by cache TTL: %s", exc)

    async def ping(self) -> None:
        """Raise unless Redis answers (the dependency check behind `/health`)."""
        await self._redis.ping()

    async def aclose(self) -> None:
        """Cancel the listener and close the connection pool."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()

    async def _listen(self) -> None:
        """Subscribe and apply notices forever, reconnecting with backoff."""
        backoff = 0.1
        while True:
            try:
                await self._listen_once()
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("key invalidation subscription lost, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _listen_once(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            self._cache.clear()  # notices sent while we were not subscribed are lost
            self._subscribed.set()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    apply_notice(self._cache, _text(message["data"]))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data
