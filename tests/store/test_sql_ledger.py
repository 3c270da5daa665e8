"""The SQL spend ledger on SQLite and a real PostgreSQL: idempotent by request id, a rollup that equals
the ledger however often a batch is replayed, unpriced requests counted (never $0), monthly partitions
with a default one, and storage failures leaving as StoreUnavailableError."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ferryman.core.shared_state import Ledger, SpendEntry
from ferryman.errors import StoreUnavailableError
from ferryman.store.database import open_engine
from ferryman.store.migrate import upgrade_schema
from ferryman.store.sql_ledger import MAX_TEXT, SqlLedger, bounded
from tests.processes import free_port

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def spend(
    request_id: str | None = None,
    *,
    at: datetime = NOW,
    key_id: str | None = "key-a",
    team_id: str | None = "team-a",
    end_user: str | None = None,
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    cost: float | None = 0.001,
    tokens: tuple[int, int, int] = (100, 20, 0),
) -> SpendEntry:
    return SpendEntry(
        request_id=request_id or f"req_{uuid.uuid4().hex}",
        at=at,
        model=model,
        provider=provider,
        deployment=f"{provider}/{model}",
        key_id=key_id,
        team_id=team_id,
        end_user=end_user,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cached_tokens=tokens[2],
        cost_usd=cost,
    )


def random_batch(rng: random.Random, size: int, key_id: str) -> list[SpendEntry]:
    """Entries over three days, a few end users (some none), models and prices (some unpriced)."""
    return [
        spend(
            at=NOW + timedelta(hours=rng.randrange(-30, 30), seconds=rng.random()),
            key_id=key_id,
            team_id=rng.choice([None, "team-a", "team-b"]),
            end_user=rng.choice([None, "ana", "bo"]),
            model=rng.choice(["gpt-4o-mini", "claude-sonnet"]),
            cost=rng.choice([None, 0.1, 0.2, 1e-7, rng.random() / 1000]),
            tokens=(rng.randrange(10_000), rng.randrange(1_000), rng.randrange(100)),
        )
        for _ in range(size)
    ]


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
def ledger(engine: AsyncEngine) -> SqlLedger:
    return SqlLedger(engine, clock=lambda: NOW)


@pytest.fixture
async def pg_engine(postgres_database: str) -> AsyncIterator[AsyncEngine]:
    """A fresh PostgreSQL database at head: partitions exist on PostgreSQL only."""
    await upgrade_schema(postgres_database)
    engine = open_engine(postgres_database)
    yield engine
    await engine.dispose()


async def ledger_vs_rollup(
    engine: AsyncEngine, key_id: str, *, by_end_user: bool = True
) -> tuple[list[Any], list[Any]]:
    """The ledger summed per rollup key, and that rollup's rows, for one key: `spend_daily`, or without
    `by_end_user` `spend_daily_by_key`."""
    end_user = "COALESCE(end_user, '')" if by_end_user else "''"
    group = f"key_id, COALESCE(team_id, ''), {end_user}, model, provider"
    day = "DATE(at)" if engine.dialect.name == "sqlite" else "CAST(at AT TIME ZONE 'UTC' AS DATE)"
    summed = (
        f"SELECT {day}, {group}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), "  # noqa: S608 - fixed fragments
        f"COALESCE(SUM(cost_usd), 0), COUNT(*) - COUNT(cost_usd) FROM spend_ledger WHERE key_id = :key "
        "GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6"
    )
    table, end_user = ("spend_daily", "end_user") if by_end_user else ("spend_daily_by_key", "''")
    rollup = (
        f"SELECT day, key_id, team_id, {end_user}, model, provider, requests, input_tokens, output_tokens, "  # noqa: S608 - fixed fragments
        f"cached_tokens, cost_usd, unpriced_requests FROM {table} WHERE key_id = :key "
        "ORDER BY 1, 2, 3, 4, 5, 6"
    )
    async with engine.connect() as conn:
        expected = (await conn.execute(text(summed), {"key": key_id})).all()
        actual = (await conn.execute(text(rollup), {"key": key_id})).all()
    return [_normal(row) for row in expected], [_normal(row) for row in actual]


async def assert_rollups_equal_the_ledger(engine: AsyncEngine, key_id: str, requests: int) -> None:
    for by_end_user in (True, False):
        expected, actual = await ledger_vs_rollup(engine, key_id, by_end_user=by_end_user)
        assert actual == expected
        assert sum(row[6] for row in actual) == requests


def _normal(row: Any) -> tuple[Any, ...]:
    """One spelling per value: dates as ISO text (SQLite's DATE() is text), sums as Decimal to 12 places."""
    values = list(row)
    values[0] = values[0] if isinstance(values[0], str) else values[0].isoformat()
    values[-2] = Decimal(str(values[-2])).quantize(Decimal("1e-12"))
    return (*values[:-2], values[-2], int(values[-1]))


async def test_append_is_idempotent_by_request_id_and_keeps_the_first(ledger: SqlLedger) -> None:
    as_declared: Ledger = ledger  # mypy checks SqlLedger against the core's protocol here
    first = spend(cost=0.5)
    assert await as_declared.append(first) is True
    assert await ledger.append(first) is False
    # The same request id again, later and dearer (a retried write that recomputed): still a duplicate.
    assert await ledger.append(spend(first.request_id, at=NOW + timedelta(days=3), cost=9.0)) is False
    stored = [
        e for e in await ledger.entries(since=NOW - timedelta(days=1)) if e.request_id == first.request_id
    ]
    assert stored == [first]


async def test_append_many_returns_what_was_new_and_the_rollup_equals_the_ledger_under_replays(
    ledger: SqlLedger, engine: AsyncEngine
) -> None:
    key_id = f"key-{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    batch = random_batch(rng, 120, key_id)
    assert await ledger.append_many(batch) == 120
    assert await ledger.append_many(batch) == 0  # a redelivered batch
    more = random_batch(rng, 40, key_id)
    assert await ledger.append_many([*reversed(batch[:60]), *more, *more]) == 40  # overlapping, duplicated
    await assert_rollups_equal_the_ledger(engine, key_id, 160)


async def test_concurrent_writers_of_the_same_batch_insert_it_once(
    ledger: SqlLedger, engine: AsyncEngine
) -> None:
    key_id = f"key-{uuid.uuid4().hex[:8]}"
    batch = random_batch(random.Random(11), 80, key_id)
    writers = [SqlLedger(engine, clock=lambda: NOW) for _ in range(4)]
    inserted = await asyncio.gather(*(w.append_many(batch[i:] + batch[:i]) for i, w in enumerate(writers)))
    assert sum(inserted) == 80
    await assert_rollups_equal_the_ledger(engine, key_id, 80)


async def test_an_unpriced_request_is_stored_as_null_and_counted_as_unpriced_never_as_zero(
    ledger: SqlLedger, engine: AsyncEngine
) -> None:
    key_id = f"key-{uuid.uuid4().hex[:8]}"
    unpriced = spend(key_id=key_id, model="mystery", cost=None)
    await ledger.append_many([unpriced, spend(key_id=key_id, cost=0.25), spend(key_id=key_id, cost=None)])
    async with engine.connect() as conn:
        stored = await conn.scalar(
            text("SELECT cost_usd IS NULL FROM spend_ledger WHERE request_id = :id"),
            {"id": unpriced.request_id},
        )
    assert stored
    rows = await ledger.spend_report(["model"], key_id=key_id)
    by_model = {row.model: row for row in rows}
    assert by_model["mystery"].cost_usd is None  # nothing priced: unknown, not $0
    assert by_model["mystery"].totals.unpriced_requests == 1
    assert by_model["gpt-4o-mini"].cost_usd == pytest.approx(0.25)
    assert by_model["gpt-4o-mini"].totals.unpriced_requests == 1
    totals = await ledger.usage_of(key_id=key_id)
    assert (totals.requests, totals.unpriced_requests) == (3, 2)
    assert totals.cost_usd == pytest.approx(0.25)


async def test_report_groups_by_any_dimensions_over_whole_days(ledger: SqlLedger) -> None:
    run = uuid.uuid4().hex[:8]
    key_a, key_b = f"key-{run}-a", f"key-{run}-b"
    day1, day2 = datetime(2026, 11, 3, 9, tzinfo=UTC), datetime(2026, 11, 4, 23, 59, tzinfo=UTC)
    await ledger.append_many(
        [
            spend(key_id=key_a, team_id="t1", at=day1, cost=1.0, tokens=(10, 1, 0)),
            spend(key_id=key_a, team_id="t1", at=day2, cost=2.0, model="claude", provider="anthropic"),
            spend(key_id=key_b, team_id=None, at=day2, cost=4.0, end_user="ana"),
        ]
    )
    start, end = datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC)
    rows = [r for r in await ledger.spend_report(["key", "day"], start, end) if r.key_id in (key_a, key_b)]
    assert [(r.key_id, r.day, r.cost_usd) for r in rows] == sorted(
        [(key_a, date(2026, 11, 3), 1.0), (key_a, date(2026, 11, 4), 2.0), (key_b, date(2026, 11, 4), 4.0)]
    )
    assert rows[0].totals.input_tokens == 10 and rows[0].team_id is None  # not grouped by team
    # `end` at midnight excludes its day; mid-day includes it.
    only_day1 = await ledger.spend_report(["key"], start, datetime(2026, 11, 4, tzinfo=UTC), key_id=key_a)
    assert [(r.key_id, r.cost_usd) for r in only_day1] == [(key_a, 1.0)]
    with_day2 = await ledger.spend_report(["key"], start, datetime(2026, 11, 4, 1, tzinfo=UTC), key_id=key_a)
    assert [(r.key_id, r.cost_usd) for r in with_day2] == [(key_a, 3.0)]
    by_provider = await ledger.spend_report(["provider", "model"], start, end, key_id=key_a)
    assert [(r.provider, r.model) for r in by_provider] == [
        ("anthropic", "claude"),
        ("openai", "gpt-4o-mini"),
    ]
    no_team = await ledger.spend_report(["team", "end_user"], start, end, key_id=key_b)
    assert [(r.team_id, r.end_user, r.cost_usd) for r in no_team] == [(None, "ana", 4.0)]
    [total] = await ledger.spend_report([], start, end, key_id=key_a)
    assert (total.totals.requests, total.cost_usd) == (2, 3.0)
    [nothing] = await ledger.spend_report([], start, end, key_id="nobody")
    assert (nothing.totals.requests, nothing.cost_usd) == (0, 0.0)  # no spend: $0 is the truth
    assert len(await ledger.spend_report(["key", "day"], start, end, key_id=key_a, limit=1)) == 1
    with pytest.raises(ValueError, match="cannot group by colour"):
        await ledger.spend_report(["colour"])


async def test_usage_since_mid_day_counts_only_what_came_after(ledger: SqlLedger) -> None:
    team = f"team-{uuid.uuid4().hex[:8]}"
    day = datetime(2026, 11, 10, tzinfo=UTC)
    await ledger.append_many(
        [
            spend(team_id=team, at=day + timedelta(hours=10), cost=1.0),
            spend(team_id=team, at=day + timedelta(hours=14), cost=2.0, end_user="ana"),
            spend(team_id=team, at=day + timedelta(days=1, hours=1), cost=4.0, end_user="ana"),
            spend(team_id=team, at=day + timedelta(days=1, hours=2), cost=None),
        ]
    )
    after_noon = await ledger.usage_of(team_id=team, since=day + timedelta(hours=12))
    assert (after_noon.requests, after_noon.cost_usd, after_noon.unpriced_requests) == (3, 6.0, 1)
    assert (await ledger.usage_of(team_id=team, since=day)).cost_usd == 7.0
    assert (await ledger.usage_of(team_id=team, end_user="ana", since=day)).requests == 2
    assert (await ledger.usage_of(team_id=team)).requests == 4
    with pytest.raises(ValueError, match="timezone-aware"):
        await ledger.usage_of(team_id=team, since=datetime(2026, 11, 10))  # naive, on purpose


async def test_entries_since_are_oldest_first(ledger: SqlLedger) -> None:
    key_id = f"key-{uuid.uuid4().hex[:8]}"
    late, early = (
        spend(key_id=key_id, at=NOW + timedelta(days=9)),
        spend(key_id=key_id, at=NOW + timedelta(days=8)),
    )
    await ledger.append_many([late, early])
    found = [e for e in await ledger.entries(since=NOW + timedelta(days=8)) if e.key_id == key_id]
    assert found == [early, late]


async def test_values_too_long_or_unstorable_are_bounded_the_same_everywhere(ledger: SqlLedger) -> None:
    user = "u\x00" + "x" * 5_000  # PostgreSQL refuses NUL; an index refuses a value this long
    entry = spend(f"req_{'r' * 300}", end_user=user, key_id=f"key-{uuid.uuid4().hex[:8]}")
    assert await ledger.append(entry)
    assert not await ledger.append(entry)
    assert (await ledger.usage_of(key_id=entry.key_id, end_user=user)).requests == 1
    [row] = await ledger.spend_report(["end_user"], key_id=entry.key_id)
    assert row.end_user == bounded(user) and len(bounded(user)) == MAX_TEXT
    assert bounded("x" * 300) != bounded("x" * 301)  # still distinct
    assert bounded("\ud800") != "\ud800" and bounded("plain") == "plain"


async def test_partitions_for_this_and_next_month_are_created_and_hold_the_rows(
    pg_engine: AsyncEngine,
) -> None:
    engine, ledger = pg_engine, SqlLedger(pg_engine, clock=lambda: NOW)
    entry = spend()
    await ledger.append(entry)
    await ledger.prepare()  # idempotent, as when several replicas start
    await SqlLedger(engine, clock=lambda: NOW).prepare()
    async with engine.connect() as conn:
        partitions = set(
            await conn.scalars(
                text(
                    "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'spend_ledger'::regclass"
                )
            )
        )
        holder = await conn.scalar(
            text("SELECT tableoid::regclass::text FROM spend_ledger WHERE request_id = :id"),
            {"id": entry.request_id},
        )
    assert {"spend_ledger_default", "spend_ledger_y2026m11", "spend_ledger_y2026m12"} <= partitions
    assert holder == "spend_ledger_y2026m11"


async def test_a_row_outside_the_prepared_months_lands_in_the_default_partition_then_moves(
    pg_engine: AsyncEngine,
) -> None:
    engine, ledger = pg_engine, SqlLedger(pg_engine, clock=lambda: NOW)
    old = spend(at=datetime(2025, 3, 9, tzinfo=UTC), key_id=f"key-{uuid.uuid4().hex[:8]}")
    assert await ledger.append(old)

    async def holder() -> object:
        async with engine.connect() as conn:
            return await conn.scalar(
                text("SELECT tableoid::regclass::text FROM spend_ledger WHERE request_id = :id"),
                {"id": old.request_id},
            )

    assert await holder() == "spend_ledger_default"
    # A writer whose clock is in March 2025 makes that month's partition: the row moves into it.
    await SqlLedger(engine, clock=lambda: datetime(2025, 3, 20, tzinfo=UTC)).prepare()
    assert await holder() == "spend_ledger_y2025m03"
    assert not await ledger.append(old)  # still known, from its new home
    assert (await ledger.usage_of(key_id=old.key_id)).requests == 1  # the rollup did not change


@pytest.fixture(params=["postgresql-refused", "sqlite-without-schema"])
async def broken_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlLedger]:
    url = (
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/ferryman"
        if request.param == "postgresql-refused"
        else f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    )
    engine = open_engine(url)
    yield SqlLedger(engine)
    await engine.dispose()


async def test_storage_errors_leave_as_store_unavailable(broken_ledger: SqlLedger) -> None:
    for operation in (
        broken_ledger.append(spend()),
        broken_ledger.append_many([spend(), spend()]),
        broken_ledger.entries(),
        broken_ledger.spend_report(["key"]),
        broken_ledger.usage_of(key_id="k", since=NOW),
    ):
        with pytest.raises(StoreUnavailableError) as refused:
            await operation
        assert (refused.value.status, refused.value.code) == (503, "ledger_unavailable")
        assert isinstance(refused.value.__cause__, Exception)


async def test_an_in_memory_database_takes_concurrent_writers() -> None:
    """The in-memory database is one connection; lent to two writers at once, one's commit failed with
    "SQL statements in progress" (a 503 to a client whose request had been answered)."""
    url = "sqlite+aiosqlite:///:memory:"
    engine = open_engine(url)
    try:
        await upgrade_schema(url, engine=engine)
        ledger = SqlLedger(engine, clock=lambda: NOW)
        entries = [spend(key_id="key-memory") for _ in range(200)]
        recorded = await asyncio.gather(*(ledger.append(entry) for entry in entries))
        assert all(recorded)
        await assert_rollups_equal_the_ledger(engine, "key-memory", len(entries))
    finally:
        await engine.dispose()


async def test_cache_writes_and_reasoning_tokens_are_stored_read_back_and_rolled_up(
    ledger: SqlLedger, engine: AsyncEngine
) -> None:
    key_id = f"key-{uuid.uuid4().hex}"
    entry = spend(key_id=key_id, tokens=(1000, 300, 200))
    entry = dataclasses.replace(entry, cache_write_tokens=500, reasoning_tokens=120)
    assert await ledger.append(entry)
    assert await ledger.append_many([older := spend(key_id=key_id, tokens=(10, 2, 0))]) == 1  # without: 0
    stored = {e.request_id: e for e in await ledger.entries(since=NOW - timedelta(days=1))}
    assert stored[entry.request_id] == entry
    assert (stored[older.request_id].cache_write_tokens, stored[older.request_id].reasoning_tokens) == (0, 0)
    async with engine.connect() as conn:
        for rollup in ("spend_daily", "spend_daily_by_key"):
            sums = (
                await conn.execute(
                    text(
                        f"SELECT SUM(cache_write_tokens), SUM(reasoning_tokens) FROM {rollup} "  # noqa: S608 - fixed names
                        "WHERE key_id = :key"
                    ),
                    {"key": key_id},
                )
            ).one()
            assert tuple(sums) == (500, 120)


async def test_replicas_starting_together_create_a_new_month_once(postgres_database: str) -> None:
    """Replicas that start at once all find the month's partition missing, then queue for the lock: each
    one that waited must see the partition its predecessor made (a stale catalog made it fail to start)."""
    await upgrade_schema(postgres_database)
    engines = [open_engine(postgres_database) for _ in range(6)]
    try:
        for month in range(1, 7):
            moment = datetime(2031, month * 2 - 1, 15, tzinfo=UTC)
            replicas = [SqlLedger(engine, clock=lambda moment=moment: moment) for engine in engines]
            await asyncio.gather(*(replica.prepare() for replica in replicas))
        async with engines[0].connect() as conn:
            made = set(
                await conn.scalars(
                    text(
                        "SELECT relname::text FROM pg_class WHERE relkind = 'r' AND relname LIKE 'spend_ledger_y2031%'"
                    )
                )
            )
        assert made == {f"spend_ledger_y2031m{month:02d}" for month in range(1, 13)}
    finally:
        for engine in engines:
            await engine.dispose()
