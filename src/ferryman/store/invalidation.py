"""Telling every replica to forget a cached key: Redis pub/sub when configured, else this process only.

A notice is a key hash, `*` for "forget every key" (a team changed), or `models` for "the runtime
models changed" (`api/runtime_models.py` reloads them). Each replica subscribes in its
lifespan; whenever the subscription is (re)established the whole cache is dropped, because notices sent
while it was down are lost. Without Redis, other replicas catch up when their cache TTL runs out.

A notice that cannot be published is retried a few times within a fraction of a second; if Redis still
refuses it, `publish` raises `InvalidationNotDeliveredError`, because the admin who revoked a key must
learn that other replicas may still honour it. `InvalidationStatus` keeps that state for `/health` until
a later notice gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from ferryman.errors import InvalidationNotDeliveredError
from ferryman.store._redis_connect import REDIS_FAILURES, connect_pubsub, parse_redis_url
from ferryman.store.cache import GrantCache
from ferryman.store.records import utc_now

CHANNEL = "ferryman:keys:invalidate"
ALL_KEYS = "*"
MODELS_CHANGED = "models"  # not a key hash (those are 64 hex digits): the runtime model set changed
# Waits between publish attempts: a Redis failover or a dropped pooled connection usually heals within
# these; an admin call should not hang on one that does not.
PUBLISH_RETRY_DELAYS = (0.05, 0.2)
PUBLISH_TIMEOUT = 1.0  # seconds per attempt: a Redis that accepts connections but never answers

log = logging.getLogger("ferryman.store.invalidation")


@dataclass(slots=True)
class InvalidationStatus:
    """Whether this replica's notices are reaching the other replicas; `/health` reports it.

    `degraded` is set when a notice is given up on and cleared by the next one delivered, so it means
    "another replica may be honouring a key that was changed here" until then.
    """

    backend: str
    degraded: bool = False
    last_failure_at: datetime | None = None
    last_error: str | None = None  # the error's class only: messages may carry addresses

    def record_failure(self, error: BaseException) -> None:
        """A notice was given up on."""
        self.degraded = True
        self.last_failure_at = utc_now()
        self.last_error = type(error).__name__

    def record_delivery(self) -> None:
        """A notice got through: every replica that listens has now heard the latest one."""
        self.degraded = False


class InvalidationBus(Protocol):
    """Where admin operations announce that a key (or every key) changed."""

    @property
    def status(self) -> InvalidationStatus:
        """Whether notices are currently reaching the other replicas."""
        ...

    model_listeners: ModelListeners
    """Called on a `models` notice (this replica's or another's)."""

    async def publish(self, notice: str) -> None:
        """Drop `notice` (a key hash or `*`) here and, if shared, on every other replica;
        InvalidationNotDeliveredError when the other replicas could not be told."""
        ...

    async def aclose(self) -> None:
        """Stop listening and release connections."""
        ...


ModelListeners = list[Callable[[], None]]


def apply_notice(cache: GrantCache, notice: str, models: ModelListeners | None = None) -> None:
    """Act on one notice."""
    if notice == MODELS_CHANGED:
        for listener in models or ():
            listener()
    elif notice == ALL_KEYS:
        cache.clear()
    else:
        cache.invalidate(notice)


class LocalInvalidation:
    """No Redis: only this process learns at once; the cache TTL bounds everyone else's staleness."""

    def __init__(self, cache: GrantCache) -> None:
        self._cache = cache
        self._status = InvalidationStatus(backend="local")
        self.model_listeners: ModelListeners = []

    @property
    def status(self) -> InvalidationStatus:
        """Never degraded: there is nobody else to tell."""
        return self._status

    async def publish(self, notice: str) -> None:
        """Drop the entry locally."""
        apply_notice(self._cache, notice, self.model_listeners)

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisInvalidation:
    """Publishes notices on `ferryman:keys:invalidate` and applies every notice it hears."""

    def __init__(self, redis: Redis, cache: GrantCache, sentinel: Sentinel | None = None) -> None:
        self._redis = redis
        self._sentinel = sentinel
        self._cache = cache
        self._status = InvalidationStatus(backend="redis")
        self._subscribed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self.model_listeners: ModelListeners = []

    @classmethod
    async def connect(
        cls, url: str, cache: GrantCache, *, listen: bool, wait: float = 5.0
    ) -> RedisInvalidation:
        """Connect; with `listen`, subscribe and wait (up to `wait` s) until the subscription is live."""
        redis, sentinel = connect_pubsub(parse_redis_url(url))  # every form `redis_url` may take
        bus = cls(redis, cache, sentinel)
        if listen:
            bus._listener = asyncio.create_task(bus._listen(), name="ferryman-key-invalidation")
            try:
                await asyncio.wait_for(bus._subscribed.wait(), wait)
            except TimeoutError:
                log.warning("key invalidation: not subscribed yet; still retrying in the background")
        return bus

    @property
    def status(self) -> InvalidationStatus:
        """Degraded from a notice given up on until the next one is delivered."""
        return self._status

    async def publish(self, notice: str) -> None:
        """Apply locally first, then tell the other replicas, retrying briefly; InvalidationNotDeliveredError
        when Redis still refuses (what changed stays changed: only the announcement is missing)."""
        apply_notice(self._cache, notice, self.model_listeners)
        error = await self._try_publish(notice)
        for delay in PUBLISH_RETRY_DELAYS:
            if error is None:
                break
            await asyncio.sleep(delay)
            error = await self._try_publish(notice)
        if error is None:
            self._status.record_delivery()
            return
        self._status.record_failure(error)
        log.error(
            "key invalidation not published after %d attempts: %r", len(PUBLISH_RETRY_DELAYS) + 1, error
        )
        raise InvalidationNotDeliveredError(
            "The change is saved, but the other replicas could not be told (Redis did not take the "
            "notice): they may keep honouring the old key for up to key_cache_ttl_seconds, until it "
            "leaves their key cache (sooner once Redis answers again: the gateway then tells every "
            "replica to drop its key cache).",
        ) from error

    async def _try_publish(self, notice: str) -> Exception | None:
        """One attempt: the error that stopped it, or `None` once Redis has the notice."""
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self._redis.publish(CHANNEL, notice)
        except REDIS_FAILURES as exc:  # the timeout's TimeoutError is an OSError
            return exc
        return None

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
        if self._sentinel is not None:
            await self._sentinel.aclose()

    async def _listen(self) -> None:
        """Subscribe and apply notices forever, reconnecting with backoff."""
        backoff = 0.1
        while True:
            try:
                await self._listen_once()
            except REDIS_FAILURES as exc:
                self._subscribed.clear()
                log.warning("key invalidation subscription lost, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _listen_once(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            self._cache.clear()  # notices sent while we were not subscribed are lost
            apply_notice(self._cache, MODELS_CHANGED, self.model_listeners)  # and so were model changes
            self._subscribed.set()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    apply_notice(self._cache, _text(message["data"]), self.model_listeners)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data
