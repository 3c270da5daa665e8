"""The Redis-stream feeder against a real Redis and SQLite / a real PostgreSQL: every entry reaches SQL
exactly once, a database outage keeps entries pending (and the backlog gauge up) until it heals, and a
feeder SIGKILLed before acknowledging loses nothing and duplicates nothing once another one reclaims."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ferryman.core.shared_state import SpendEntry
from ferryman.errors import StoreUnavailableError
from ferryman.observability.metrics import Metrics
from ferryman.store.database import open_engine
from ferryman.store.ledger_feeder import GATHER_READS, FeederSettings, LedgerFeeder, read_spend
from ferryman.store.migrate import upgrade_schema
from ferryman.store.redis_state import encode_spend_entry, ledger_stream_key
from ferryman.store.sql_ledger import SqlLedger
from tests.processes import free_port

FAST = FeederSettings(
    batch_size=50, batch_wait=0.05, idle_block=0.1, reclaim_idle=0.2, retry_initial=0.05, retry_max=0.2
)
START = datetime(2026, 11, 15, 8, 0, tzinfo=UTC)


def spend(key_id: str, n: int, cost: float | None = 0.01) -> SpendEntry:
    return SpendEntry(
        request_id=f"req_{key_id}_{n}",
        at=START + timedelta(seconds=n),
        model="gpt-4o-mini",
        provider="openai",
        deployment="openai/gpt-4o-mini",
        key_id=key_id,
        team_id="team-a",
        end_user=None,
        input_tokens=100,
        output_tokens=10,
        cached_tokens=0,
        cost_usd=cost,
    )


@pytest.fixture(scope="module")
def migrated(database_url: str) -> Iterator[str]:
    asyncio.run(upgrade_schema(database_url))
    yield database_url


@pytest.fixture
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    engine = open_engine(migrated)
    yield engine
    await engine.dispose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A stream of this test's own (the Redis is shared: only these keys are ever deleted)."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    await redis.delete(ledger_stream_key(name), ledger_stream_key(name) + ":dead")


@pytest.fixture
def key_id() -> str:
    return f"key-{uuid.uuid4().hex[:12]}"


async def append(redis: Redis, prefix: str, entries: list[SpendEntry]) -> None:
    """What the Redis ledger does for each request: XADD `request_id` and `entry`."""
    async with redis.pipeline(transaction=False) as pipe:
        for entry in entries:
            pipe.xadd(
                ledger_stream_key(prefix),
                {"request_id": entry.request_id, "entry": encode_spend_entry(entry)},
            )
        await pipe.execute()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Poll `check` (state in Redis and SQL, which no asyncio.Event could signal) until it holds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polling outside state is the point
            await asyncio.sleep(0.05)


async def stored(engine: AsyncEngine, key_id: str) -> tuple[int, int, int]:
    """(ledger rows, distinct request ids, requests in the rollup) for one key."""
    async with engine.connect() as conn:
        rows, distinct = (
            await conn.execute(
                text("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM spend_ledger WHERE key_id = :key"),
                {"key": key_id},
            )
        ).one()
        rollup = await conn.scalar(
            text("SELECT COALESCE(SUM(requests), 0) FROM spend_daily WHERE key_id = :key"), {"key": key_id}
        )
    return int(rows), int(distinct), int(rollup)


async def pending(redis: Redis, prefix: str, group: str = "ferryman-ledger") -> int:
    return int((await redis.xpending(ledger_stream_key(prefix), group))["pending"])


def test_the_feeder_reads_what_the_redis_ledger_writes_and_refuses_what_sql_could_not_store() -> None:
    entry = spend("k", 1, cost=None)
    assert read_spend(encode_spend_entry(entry).encode()) == entry
    good = encode_spend_entry(entry)
    for bad, reason in (
        ("not json", "not a spend entry"),
        ("[]", "not a spend entry"),
        ('{"request_id": "r"}', "not a spend entry: KeyError"),
        (good.replace("+00:00", ""), "not a spend entry"),  # no time zone
        (good.replace('"input_tokens":100', f'"input_tokens":{2**63}'), "BIGINT"),
        (good.replace('"cost_usd":null', '"cost_usd":1e300'), "NUMERIC"),
        (good.replace('"reasoning_tokens":0', f'"reasoning_tokens":{2**63}'), "BIGINT"),
    ):
        with pytest.raises(ValueError, match=reason):
            read_spend(bad.encode())


async def test_entries_reach_sql_exactly_once_including_those_written_before_any_feeder(
    redis: Redis, prefix: str, engine: AsyncEngine, key_id: str
) -> None:
    entries = [spend(key_id, n) for n in range(230)]
    await append(redis, prefix, entries)  # the stream exists before the group: nothing may be skipped
    await append(redis, prefix, entries[:20])  # a producer that wrote some twice
    feeders = [
        LedgerFeeder(redis, SqlLedger(engine), prefix=prefix, consumer=f"replica-{i}", settings=FAST)
        for i in range(2)
    ]
    for feeder in feeders:
        feeder.start()
    await append(redis, prefix, [spend(key_id, n) for n in range(230, 300)])  # and some while running
    try:
        await eventually(lambda: _empty(redis, prefix))
    finally:
        for feeder in feeders:
            await feeder.aclose()
    assert await stored(engine, key_id) == (300, 300, 300)
    assert await pending(redis, prefix) == 0


async def _empty(redis: Redis, prefix: str) -> bool:
    return int(await redis.xlen(ledger_stream_key(prefix))) == 0


async def test_a_trickle_is_gathered_in_a_few_reads_per_batch_not_one_per_entry(
    redis: Redis, prefix: str, key_id: str
) -> None:
    """Entries arriving one by one (as requests end) fill a batch through a few reads: a read blocked on
    the stream returned with the first entry to arrive, one round trip per entry."""
    batches: list[int] = []

    class Counting:
        async def append_many(self, entries: Iterable[SpendEntry]) -> int:
            batches.append(len(list(entries)))
            return batches[-1]

    settings = FeederSettings(batch_wait=0.4, idle_block=0.1)
    feeder = LedgerFeeder(redis, Counting(), prefix=prefix, settings=settings)
    reads_with_entries = 0
    read = feeder._read

    async def counted(start: str, count: int, block: float | None) -> list[tuple[str, Any]]:
        nonlocal reads_with_entries
        entries = await read(start, count, block)
        reads_with_entries += bool(entries)
        return entries

    feeder._read = counted  # type: ignore[method-assign]
    feeder.start()
    try:
        for n in range(40):
            await append(redis, prefix, [spend(key_id, n)])
            await asyncio.sleep(0.02)
        await eventually(lambda: _true(sum(batches) == 40))
    finally:
        await feeder.aclose()
    # Per batch: the first read, then at most GATHER_READS top-ups (one more for a deadline not quite met).
    assert reads_with_entries <= len(batches) * (GATHER_READS + 2)


async def test_an_undecodable_entry_is_kept_aside_and_does_not_block_the_rest(
    redis: Redis, prefix: str, engine: AsyncEngine, key_id: str
) -> None:
    await redis.xadd(ledger_stream_key(prefix), {"request_id": "broken", "entry": b'{"oops": 1}'})
    await append(redis, prefix, [spend(key_id, n) for n in range(5)])
    feeder = LedgerFeeder(redis, SqlLedger(engine), prefix=prefix, settings=FAST)
    assert await feeder.drain() == 6
    assert await stored(engine, key_id) == (5, 5, 5)
    assert await feeder.backlog() == 0
    [(_, fields)] = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(feeder.dead_letters))
    assert fields[b"entry"] == b'{"oops": 1}'
    assert fields[b"error"].startswith(b"not a spend entry: KeyError")
    assert await redis.xlen(feeder.dead_letters) == 1 and await pending(redis, prefix) == 0


async def test_aclose_writes_what_arrived_just_before_it(
    redis: Redis, prefix: str, engine: AsyncEngine, key_id: str
) -> None:
    feeder = LedgerFeeder(redis, SqlLedger(engine), prefix=prefix, settings=FAST)
    feeder.start()
    await append(redis, prefix, [spend(key_id, n) for n in range(40)])
    await feeder.aclose()
    assert await stored(engine, key_id) == (40, 40, 40)
    assert await feeder.backlog() == 0


VICTIM = """
import asyncio, os, signal, sys
from redis.asyncio import Redis
from ferryman.store.database import open_engine
from ferryman.store.ledger_feeder import FeederSettings, LedgerFeeder
from ferryman.store.sql_ledger import SqlLedger

redis_url, database_url, prefix, when = sys.argv[1:]

class Dying:
    def __init__(self, ledger):
        self.ledger = ledger

    async def append_many(self, entries):
        if when == "after-commit":
            await self.ledger.append_many(entries)
        os.kill(os.getpid(), signal.SIGKILL)  # no ack, no cleanup: a replica killed by the OOM killer

async def main():
    engine = open_engine(database_url)
    feeder = LedgerFeeder(Redis.from_url(redis_url), Dying(SqlLedger(engine)), prefix=prefix,
                          consumer="victim-" + when, settings=FeederSettings(batch_size=1000))
    await feeder.drain()

asyncio.run(main())
"""


def run_victim(redis_url: str, database_url: str, prefix: str, when: str) -> None:
    victim = subprocess.run(
        [sys.executable, "-c", VICTIM, redis_url, database_url, prefix, when], capture_output=True, timeout=60
    )
    assert victim.returncode == -signal.SIGKILL, victim.stderr.decode()


@pytest.mark.parametrize("when", ["before-commit", "after-commit"])
async def test_a_feeder_killed_before_acknowledging_loses_nothing_and_duplicates_nothing(
    redis: Redis, redis_url: str, migrated: str, prefix: str, engine: AsyncEngine, key_id: str, when: str
) -> None:
    await append(redis, prefix, [spend(key_id, n) for n in range(60)])
    await asyncio.to_thread(run_victim, redis_url, migrated, prefix, when)
    assert await pending(redis, prefix) == 60  # delivered to the dead consumer, never acknowledged
    assert (await stored(engine, key_id))[0] == (60 if when == "after-commit" else 0)
    await asyncio.sleep(FAST.reclaim_idle)
    survivor = LedgerFeeder(redis, SqlLedger(engine), prefix=prefix, consumer="survivor", settings=FAST)
    assert await survivor.drain() == 60
    assert await stored(engine, key_id) == (60, 60, 60)
    assert await pending(redis, prefix) == 0
    assert await survivor.backlog() == 0


class Outage:
    """A TCP relay in front of PostgreSQL that can be cut (listener closed, connections dropped)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._links):
            writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, upstream_writer))
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._links.discard(writer)


async def test_a_database_outage_keeps_spend_pending_shows_the_backlog_and_drains_when_it_returns(
    redis: Redis, prefix: str, postgres_database: str, key_id: str
) -> None:
    await upgrade_schema(postgres_database)
    url = make_url(postgres_database)
    outage = Outage((url.host or "127.0.0.1", url.port or 5432))
    await outage.up()
    engine = open_engine(url.set(host="127.0.0.1", port=outage.port).render_as_string(hide_password=False))
    metrics = Metrics.create()

    def gauge() -> float:
        return metrics.registry.get_sample_value("ai_api_ledger_backlog") or 0.0

    feeder = LedgerFeeder(
        redis, SqlLedger(engine), prefix=prefix, settings=FAST, on_backlog=metrics.ledger_backlog.set
    )
    feeder.start()
    try:
        await append(redis, prefix, [spend(key_id, n) for n in range(10)])
        await eventually(lambda: _empty(redis, prefix))  # healthy: written and gone
        await outage.down()
        await append(redis, prefix, [spend(key_id, n) for n in range(10, 130)])
        await eventually(lambda: _true(gauge() == 120))
        await asyncio.sleep(1.0)  # several retries while the database is away
        assert await feeder.backlog() == 120  # nothing acknowledged, nothing dropped
        await outage.up()
        await eventually(lambda: _true(gauge() == 0))
    finally:
        await feeder.aclose()
        await outage.down()
        await engine.dispose()
    direct = open_engine(postgres_database)
    try:
        assert await stored(direct, key_id) == (130, 130, 130)
    finally:
        await direct.dispose()
    assert await pending(redis, prefix) == 0


async def _true(value: bool) -> bool:
    return value


async def test_a_killed_consumers_entries_are_taken_within_the_lease_not_after_reclaim_idle(
    redis: Redis, redis_url: str, migrated: str, prefix: str, engine: AsyncEngine, key_id: str
) -> None:
    """A replica restarted after a SIGKILL has a new consumer name: waiting `reclaim_idle` (a minute)
    for the dead one's batch kept that spend out of SQL that long. A consumer with no lease, silent for a
    lease's length, is gone: a running feeder takes its entries at once."""
    await append(redis, prefix, [spend(key_id, n) for n in range(60)])
    await asyncio.to_thread(run_victim, redis_url, migrated, prefix, "before-commit")
    assert await pending(redis, prefix) == 60
    settings = FeederSettings(batch_wait=0.05, idle_block=0.1, reclaim_idle=600.0, lease=0.3)
    survivor = LedgerFeeder(redis, SqlLedger(engine), prefix=prefix, consumer="survivor", settings=settings)
    survivor.start()
    try:
        await eventually(lambda: stored_is(engine, key_id, (60, 60, 60)), within=5)
    finally:
        await survivor.aclose()
    assert await pending(redis, prefix) == 0


async def test_a_live_consumers_entries_stay_its_own_while_it_keeps_its_lease(
    redis: Redis, prefix: str, engine: AsyncEngine, key_id: str
) -> None:
    """A feeder whose database refuses keeps retrying (rarely touching the stream) but renews its lease:
    nobody takes its batch. Once it stops, its lease is dropped and the batch goes to the next feeder."""

    class Refusing:
        async def append_many(self, entries: object) -> int:
            raise StoreUnavailableError("database down")

    settings = FeederSettings(
        batch_wait=0.05, idle_block=0.1, reclaim_idle=600.0, lease=0.3, retry_initial=3.0, retry_max=3.0
    )
    holder = LedgerFeeder(redis, Refusing(), prefix=prefix, consumer="holder", settings=settings)
    other = LedgerFeeder(redis, SqlLedger(engine), prefix=prefix, consumer="other", settings=settings)
    await append(redis, prefix, [spend(key_id, n) for n in range(10)])
    holder.start()
    try:
        await eventually(lambda: _holds(redis, prefix, "holder", 10), within=5)
        await asyncio.sleep(1.0)  # the holder is idle on the stream far past a lease, waiting to retry
        assert await other.drain() == 0
        assert await _holds(redis, prefix, "holder", 10)
    finally:
        await holder.aclose()
    await asyncio.sleep(settings.lease)  # silent for a lease's length, and no lease: gone
    assert await other.drain() == 10
    assert await stored(engine, key_id) == (10, 10, 10)


async def stored_is(engine: AsyncEngine, key_id: str, expected: tuple[int, int, int]) -> bool:
    return await stored(engine, key_id) == expected


async def _holds(redis: Redis, prefix: str, consumer: str, count: int) -> bool:
    """Whether `consumer` has exactly `count` entries pending (False before the group exists)."""
    stream = ledger_stream_key(prefix)
    try:
        held = await redis.xpending_range(stream, "ferryman-ledger", "-", "+", 100, consumer)
    except ResponseError:  # NOGROUP: the feeder has not made the group yet
        return False
    return len(held) == count


def test_cache_writes_and_reasoning_tokens_survive_the_stream_and_old_entries_read_as_zero() -> None:
    entry = dataclasses.replace(spend("k", 1), cache_write_tokens=40, reasoning_tokens=9)
    assert read_spend(encode_spend_entry(entry).encode()) == entry
    old = json.loads(encode_spend_entry(entry))
    del old["cache_write_tokens"], old["reasoning_tokens"]  # written by a release before the fields
    assert read_spend(json.dumps(old).encode()) == dataclasses.replace(
        entry, cache_write_tokens=0, reasoning_tokens=0
    )


async def test_cache_writes_and_reasoning_tokens_reach_sql_through_the_feeder(
    redis: Redis, prefix: str, engine: AsyncEngine, key_id: str
) -> None:
    entry = dataclasses.replace(spend(key_id, 1), cache_write_tokens=40, reasoning_tokens=9)
    await append(redis, prefix, [entry])
    feeder = LedgerFeeder(redis, SqlLedger(engine), prefix=prefix, settings=FAST)
    feeder.start()
    try:
        await eventually(lambda: _empty(redis, prefix))
    finally:
        await feeder.aclose()
    stored = [e for e in await SqlLedger(engine).entries() if e.request_id == entry.request_id]
    assert stored == [entry]
