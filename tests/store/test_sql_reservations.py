"""What SQL reservations promise beyond the shared contract (tests/core/test_shared_state.py runs that on
SQLite and PostgreSQL too): atomicity across engines, as across worker processes sharing one database."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from sqlalchemy import func, select

from ferryman.core.shared_state import Ceiling
from ferryman.errors import SharedStateUnavailableError
from ferryman.store.database import open_engine
from ferryman.store.sql_reservations import HOLD_CEILINGS, HOLDS, LEVELS, SqlReservations
from tests.processes import free_port
from tests.store.sql_backend import (  # noqa: F401 - fixtures
    emptied_reservations,
    sql_reservations_postgresql,
    sql_reservations_sqlite,
)

WORKERS = 4


@pytest.fixture(
    params=["sql_reservations_sqlite", "sql_reservations_postgresql"], ids=["sqlite", "postgresql"]
)
def database(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.fixture
async def workers(database: str) -> AsyncIterator[list[SqlReservations]]:
    """One `SqlReservations` per simulated worker, each on an engine (a pool) of its own."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(emptied_reservations(database))
        others = [open_engine(database) for _ in range(WORKERS - 1)]
        for engine in others:
            stack.push_async_callback(engine.dispose)
        yield [first, *(SqlReservations(engine) for engine in others)]


async def test_workers_reserving_at_once_never_overshoot_and_admit_exactly_what_fits(
    workers: list[SqlReservations],
) -> None:
    ceiling = Ceiling("budget:key-1:daily", limit=3.0, ttl=60.0)  # exactly 30 holds of $0.10
    answers = await asyncio.gather(
        *(workers[i % WORKERS].reserve(f"r{i}", [ceiling], 0.1, ttl=30.0) for i in range(120))
    )
    assert sum(a.allowed for a in answers) == 30
    refused = [a for a in answers if not a.allowed]
    assert {a.refused_key for a in refused} == {ceiling.key}
    assert all(0 < a.retry_after <= 30.0 for a in refused)  # when the holds in the way lapse
    for worker in workers:  # every worker sees the same level
        committed, held = await worker.level(ceiling.key)
        assert committed == 0
        assert held == pytest.approx(3.0)


async def test_overlapping_ceilings_in_any_order_never_deadlock_or_overshoot(
    workers: list[SqlReservations],
) -> None:
    key = Ceiling("budget:key:daily", limit=2.0, ttl=60.0)
    team = Ceiling("budget:team:daily", limit=1.5, ttl=60.0)
    gateway = Ceiling("budget:global:daily", limit=100.0, ttl=60.0)
    orders = [[key, team, gateway], [gateway, team, key], [team, key, gateway]]
    answers = await asyncio.gather(
        *(workers[i % WORKERS].reserve(f"r{i}", orders[i % 3], 0.1, ttl=30.0) for i in range(60))
    )
    assert sum(a.allowed for a in answers) == 15  # the team's $1.50 runs out first
    assert (await workers[0].level(team.key))[1] == pytest.approx(1.5)
    assert (await workers[1].level(key.key))[1] == pytest.approx(1.5)


async def test_settles_and_reservations_racing_account_for_every_cent(workers: list[SqlReservations]) -> None:
    ceiling = Ceiling("budget:key-2:daily", limit=1000.0, ttl=60.0)
    rng = random.Random(7)
    costs = [round(rng.uniform(0.01, 0.5), 4) for _ in range(40)]

    async def request(i: int) -> None:
        worker = workers[i % WORKERS]
        assert (await worker.reserve(f"r{i}", [ceiling], 1.0, ttl=30.0)).allowed
        await asyncio.sleep(0)
        await workers[(i + 1) % WORKERS].settle(f"r{i}", costs[i])  # settled by another worker

    await asyncio.gather(*(request(i) for i in range(len(costs))))
    committed, held = await workers[2].level(ceiling.key)
    assert committed == pytest.approx(sum(costs))
    assert held == 0


async def test_a_hold_lapses_for_every_worker_and_a_late_settle_still_commits(
    workers: list[SqlReservations],
) -> None:
    ceiling = Ceiling("budget:key-3:daily", limit=1.0, ttl=60.0)
    assert (await workers[0].reserve("slow", [ceiling], 0.8, ttl=0.4)).allowed
    assert not (await workers[1].reserve("next", [ceiling], 0.5, ttl=5.0)).allowed
    await asyncio.sleep(0.6)
    assert await workers[1].level(ceiling.key) == (0, 0)
    assert (await workers[1].reserve("next", [ceiling], 0.5, ttl=5.0)).allowed
    assert await workers[2].settle("slow", 0.7) == {ceiling.key: pytest.approx(0.7)}
    assert await workers[3].level(ceiling.key) == pytest.approx((0.7, 0.5))


async def test_one_id_reserved_by_two_workers_at_once_is_held_once(workers: list[SqlReservations]) -> None:
    first, second = Ceiling("budget:a:daily", 10, 60.0), Ceiling("budget:b:daily", 10, 60.0)
    results = await asyncio.gather(
        workers[0].reserve("same", [first], 1, ttl=30.0),
        workers[1].reserve("same", [second], 1, ttl=30.0),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Admission", "ValueError"]
    held = [(await workers[2].level(c.key))[1] for c in (first, second)]
    assert sorted(held) == [0, 1]


async def test_restorable_levels_are_rebuilt_once_across_workers(workers: list[SqlReservations]) -> None:
    ceiling = Ceiling("budget:key-4:monthly", limit=10, ttl=60.0, restorable=True)
    first = await workers[0].reserve("r1", [ceiling], 1, ttl=30.0)
    assert (first.allowed, first.unknown) == (False, (ceiling.key,))
    restored = await asyncio.gather(
        *(worker.restore(ceiling.key, 4.0 + i, ttl=60.0, if_absent=True) for i, worker in enumerate(workers))
    )
    assert sum(restored) == 1
    answer = await workers[1].reserve("r1", [ceiling], 1, ttl=30.0)
    assert answer.allowed
    assert answer.remaining == pytest.approx((10 - 4.0 - restored.index(True) - 1,))


async def test_clean_up_forgets_lapsed_holds_and_ended_levels(database: str) -> None:
    async with emptied_reservations(database) as seeded:
        ceiling = Ceiling("budget:key-5:daily", limit=10, ttl=0.3)
        await seeded.reserve("closed", [ceiling], 1, ttl=0.2)
        await seeded.release("closed")
        await seeded.reserve("lapsed", [Ceiling("budget:key-6:daily", 10, 0.3)], 1, ttl=0.2)
        kept = Ceiling("budget:key-7:daily", limit=10, ttl=60.0)
        await seeded.reserve("open", [kept], 1, ttl=30.0)
        await asyncio.sleep(0.5)
        engine = open_engine(database)
        try:
            await SqlReservations(engine, cleanup_interval=0).reserve("trigger", [kept], 1, ttl=30.0)
            async with engine.connect() as conn:
                holds = set(await conn.scalars(select(HOLDS.c.id)))
                levels = set(await conn.scalars(select(LEVELS.c.key)))
                ceilings = await conn.scalar(select(func.count()).select_from(HOLD_CEILINGS))
        finally:
            await engine.dispose()
    assert holds == {"open", "trigger"}
    assert levels == {kept.key}
    assert ceilings == 2


async def test_an_unreachable_database_is_shared_state_unavailable() -> None:
    engine = open_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nobody")  # nothing listens
    try:
        reservations = SqlReservations(engine)
        with pytest.raises(SharedStateUnavailableError):
            await reservations.reserve("r1", [Ceiling("budget:x", 1, 60.0)], 0.5, ttl=30.0)
        with pytest.raises(SharedStateUnavailableError):
            await reservations.level("budget:x")
    finally:
        await engine.dispose()
