"""The response cache on its two backends: the in-process LRU bounded by bytes, and a real Redis shared
by stages of different replicas, with the entry's TTL kept by Redis itself (SET PX)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from ferryman.api.app import response_store
from ferryman.core.caller import Caller
from ferryman.core.canonical import ChatRequest, ChatResponse, Message, TextPart, Usage
from ferryman.core.exchange import Exchange
from ferryman.core.pipeline import Outcome
from ferryman.core.response_cache import CachePolicy, ResponseCache, encode_entry
from ferryman.core.shared_state import SharedState
from ferryman.settings import settings_from_mapping
from ferryman.store.backends import open_shared_state
from ferryman.store.memory import MemoryCache

CALLER = Caller(key_alias="app", key_id="k1")
ANSWER = ChatResponse("resp-1", "m", Message("assistant", (TextPart("stored"),)), "stop", Usage(2, 1))


def exchange_for(text: str) -> Exchange:
    exchange = Exchange(request_id="r")
    request = ChatRequest(model="m", messages=(Message("user", (TextPart(text),)),), temperature=0)
    exchange.admit(CALLER, request)
    return exchange


async def answer_and_store(stage: ResponseCache, text: str) -> Exchange:
    """One miss through `stage` whose upstream answered `ANSWER`, stored on exit."""
    exchange = exchange_for(text)
    assert await stage.enter(exchange) is None
    exchange.answered_by = "upstream"
    await stage.exit(exchange, Outcome("answered", response=ANSWER))
    return exchange


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def prefix(redis_client: Redis) -> AsyncIterator[str]:
    """A fresh key prefix, its keys deleted afterwards (never a flush: the Redis is shared)."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    async for key in redis_client.scan_iter(match=f"{name}:*"):
        await redis_client.delete(key)


@pytest.fixture
async def redis_state(redis_url: str, prefix: str) -> AsyncIterator[SharedState]:
    separator = "&" if "?" in redis_url else "?"
    state = await open_shared_state(f"{redis_url}{separator}prefix={prefix}")
    try:
        yield state
    finally:
        await state.close()


async def test_the_memory_store_evicts_the_least_recently_used_past_max_bytes() -> None:
    entry = len(encode_entry(ANSWER, "m"))
    stage = ResponseCache(MemoryCache(max_bytes=2 * entry), {"m": CachePolicy(ttl=60)})
    for text in ("one", "two"):
        await answer_and_store(stage, text)
    assert await stage.enter(exchange_for("one")) is not None  # "one" is now the most recently used
    await answer_and_store(stage, "three")  # over the cap: "two", the least recently used, goes
    verdicts = {}
    for text in ("one", "two", "three"):
        probe = exchange_for(text)
        await stage.enter(probe)
        verdicts[text] = probe.cache_result
    assert verdicts == {"one": "hit", "two": "miss", "three": "hit"}


def test_the_configured_backend_is_chosen_and_bounded() -> None:
    memory = settings_from_mapping({"cache": {"enabled": True, "max_bytes": 1234}})
    shared = SharedState(counters=None, reservations=None, cache=MemoryCache(), ledger=None, close=None)  # type: ignore[arg-type]
    store = response_store(memory, shared)
    assert isinstance(store, MemoryCache) and store is not shared.cache
    assert store._max_bytes == 1234
    redis = settings_from_mapping({"redis_url": "redis://127.0.0.1:1", "cache": {"backend": "redis"}})
    assert response_store(redis, shared) is shared.cache


async def test_replicas_share_entries_through_redis(redis_state: SharedState) -> None:
    policies = {"m": CachePolicy(ttl=60)}
    one = ResponseCache(redis_state.cache, policies)
    two = ResponseCache(redis_state.cache, policies)
    await answer_and_store(one, "shared question")
    probe = exchange_for("shared question")
    hit = await two.enter(probe)
    assert probe.cache_result == "hit"
    assert isinstance(hit, ChatResponse) and hit.message.text == "stored" and hit.usage == Usage(2, 1)


async def test_redis_expires_entries_by_their_ttl(
    redis_state: SharedState, redis_client: Redis, prefix: str
) -> None:
    stage = ResponseCache(redis_state.cache, {"m": CachePolicy(ttl=30)})
    await answer_and_store(stage, "expiring question")
    (name,) = [name async for name in redis_client.scan_iter(match=f"{prefix}:cache:response:key:k1:*")]
    assert await redis_client.get(name) == encode_entry(ANSWER, "m")
    ttl_ms = await redis_client.pttl(name)
    await redis_client.pexpire(name, 1)  # as if the 30 s had passed
    await asyncio.sleep(0.01)
    assert 29_000 < ttl_ms <= 30_000
    probe = exchange_for("expiring question")
    assert await stage.enter(probe) is None and probe.cache_result == "miss"
