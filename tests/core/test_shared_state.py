"""The shared-state contract every backend meets, then what only the in-process backend promises.

The contract tests take a `backend` fixture parametrized by URL; a new backend joins by adding its URL
(or the fixture serving it) to `BACKEND_URLS`. Time passes through `backend.advance`: a fake clock for
`memory://`, real sleeping for a server that measures time itself, so durations here stay around a
second. Redis runs standalone, as a 3-master Cluster and behind a Sentinel, each test under a fresh
key prefix; the shared standalone Redis is cleaned of that prefix afterwards, never flushed.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from redis.asyncio import Redis

import ferryman.core.shared_state as shared_state_module
from ferryman.core.shared_state import (
    Admission,
    Ceiling,
    Hold,
    SharedState,
    SpendEntry,
    Window,
    within_limit,
)
from ferryman.errors import ConfigError
from ferryman.store.backends import open_shared_state
from ferryman.store.memory import MemoryCache, MemoryReservations, MemoryWindowCounters, open_memory_state
from tests.store.redis_topologies import redis_cluster_url, redis_sentinel_url  # noqa: F401 - fixtures
from tests.store.sql_backend import (  # noqa: F401 - fixtures
    emptied_reservations,
    sql_reservations_postgresql,
    sql_reservations_sqlite,
)

BACKEND_URLS = [
    pytest.param("memory://", id="memory"),
    pytest.param("redis_url", id="redis"),
    pytest.param("redis_cluster_url", id="redis-cluster"),
    pytest.param("redis_sentinel_url", id="redis-sentinel"),
]
"""`memory://` itself, or the name of the fixture serving a real server's URL."""

RESERVATION_BACKENDS = [
    *BACKEND_URLS,
    pytest.param("sql_reservations_sqlite", id="sql-sqlite"),
    pytest.param("sql_reservations_postgresql", id="sql-postgresql"),
]
"""The reservations contract also binds `store.sql_reservations`, which implements `Reservations` only:
its `backend` has in-process counters, cache and ledger beside it, which the tests marked
`reservations_contract` never use."""

reservations_contract = pytest.mark.parametrize("backend", RESERVATION_BACKENDS, indirect=True)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """A backend under test: its state, a way to let time pass for it, and keys no other test uses."""

    state: SharedState
    sleep: Callable[[float], Awaitable[None]]
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex)
    now: Callable[[], float] = time.monotonic  # the test's view of the time `advance` moves
    advanced: float = 0.0
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.now()

    def key(self, name: str) -> str:
        return f"test:{self.prefix}:{name}"

    async def advance(self, seconds: float) -> None:
        self.advanced += seconds
        await self.sleep(seconds)

    def assert_wait(self, actual: float, expected: float) -> None:
        """`actual` is the wait `expected` of a test whose steps took no time. On a real clock the steps
        do take time (a busy CI machine: 50 ms and more), and every moment they took is one less to
        wait, so the wait is bounded by that lag below and by the clocks' rounding above."""
        lag = max(self.now() - self.started - self.advanced, 0.0)
        assert expected - lag - 0.01 <= actual <= expected + 0.01, (actual, expected, lag)


@pytest.fixture(params=BACKEND_URLS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url: str = request.param
    if url.startswith("memory:"):
        clock = FakeClock()
        opened = Backend(await open_memory_state(url, clock=clock), clock.advance, now=clock)
        try:
            yield opened
        finally:
            await opened.state.close()
        return
    if url.startswith("sql_reservations_"):  # a migrated database; the database's clock: real sleeping
        async with emptied_reservations(request.getfixturevalue(url)) as reservations:
            local = await open_memory_state("memory://")
            yield Backend(dataclasses.replace(local, reservations=reservations), asyncio.sleep)
        return
    server_url: str = request.getfixturevalue(url)
    prefix = f"test-{uuid.uuid4().hex}"
    # A timeout well above the 0.25 s default: these tests are about semantics, and a burst of 200 calls
    # on a shared, busy machine can wait longer than that for the event loop alone (and a cluster's first
    # call, which discovers its layout, took over 2 s once under a full CI run).
    # tests/store/test_redis_state.py checks the default's failure behaviour.
    opened = Backend(await open_shared_state(f"{server_url}?prefix={prefix}&timeout=5"), asyncio.sleep)
    try:
        yield opened
    finally:
        await opened.state.close()
        if url == "redis_url":  # the shared Redis: take away this test's keys (the stream never expires)
            await _delete_prefixed(server_url, prefix)


async def _delete_prefixed(url: str, prefix: str) -> None:
    client = Redis.from_url(url)
    try:
        for pattern in (f"{{{prefix}}}:*", f"{prefix}:*"):
            async for name in client.scan_iter(match=pattern, count=1000):
                await client.delete(name)
    finally:
        await client.aclose()


def spend(request_id: str, at: datetime, cost: float | None = 0.01) -> SpendEntry:
    return SpendEntry(
        request_id=request_id,
        at=at,
        model="gpt-4o-mini",
        provider="openai",
        deployment="openai/gpt-4o-mini",
        key_id="key-1",
        team_id=None,
        end_user=None,
        input_tokens=10,
        output_tokens=5,
        cached_tokens=0,
        cost_usd=cost,
    )


# --- value types ---------------------------------------------------------------------------------------


def test_core_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(shared_state_module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize(
    "build",
    [
        lambda: Window("w", limit=-1, seconds=60),
        lambda: Window("w", limit=1, seconds=0),
        lambda: Window("w", limit=math.nan, seconds=60),
        lambda: Ceiling("c", limit=1, ttl=math.inf),
        lambda: Admission(False, retry_after=math.inf),
        lambda: Hold("h", (), amount=-1, ttl=1.0),
        lambda: Hold("h", (), amount=1, ttl=math.inf),
        lambda: Hold("h", (Ceiling("c", limit=1, ttl=1.0, restorable=True),), amount=1, ttl=1.0),
        lambda: spend("r", datetime(2025, 1, 1)),  # naive
        lambda: spend("r", datetime(2025, 1, 1, tzinfo=timezone(timedelta(hours=2)))),
        lambda: spend("r", datetime(2025, 1, 1, tzinfo=UTC), cost=-0.5),
    ],
)
def test_value_types_refuse_impossible_values(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


def test_within_limit_forgives_rounding_but_not_more() -> None:
    assert sum([0.1] * 30) != 3.0
    assert within_limit(sum([0.1] * 30), 3.0)
    assert not within_limit(3.0001, 3.0)
    assert within_limit(5.0, math.inf)


# --- window counters -----------------------------------------------------------------------------------


async def test_check_and_add_admits_up_to_the_limit_then_refuses(backend: Backend) -> None:
    window = Window(backend.key("rpm"), limit=3, seconds=1.0)
    answers = [await backend.state.counters.check_and_add([window], 1) for _ in range(4)]
    assert [a.allowed for a in answers] == [True, True, True, False]
    assert [a.remaining for a in answers] == [(2,), (1,), (0,), (0,)]
    assert answers[0].retry_after == 0 and answers[0].refused_key is None
    assert answers[3].refused_key == window.key
    assert await backend.state.counters.count(window) == 3


async def test_one_refusing_window_leaves_every_window_unchanged(backend: Backend) -> None:
    counters = backend.state.counters
    roomy = Window(backend.key("team"), limit=100, seconds=1.0)
    tight = Window(backend.key("key"), limit=5, seconds=1.0)
    await counters.add([roomy], 10)
    await counters.add([tight], 4)
    answer = await counters.check_and_add([roomy, tight], 2)
    assert not answer.allowed
    assert answer.refused_key == tight.key
    assert answer.remaining == (90, 1)
    assert (await counters.count(roomy), await counters.count(tight)) == (10, 4)


async def test_the_first_refusing_window_is_named(backend: Backend) -> None:
    first, second = Window(backend.key("a"), 1, 1.0), Window(backend.key("b"), 1, 1.0)
    answer = await backend.state.counters.check_and_add([first, second], 2)
    assert (answer.allowed, answer.refused_key) == (False, first.key)


async def test_retry_after_is_when_enough_old_units_slide_out(backend: Backend) -> None:
    counters = backend.state.counters
    window = Window(backend.key("tpm"), limit=3, seconds=1.0)
    await counters.add([window], 2)
    await backend.advance(0.3)
    await counters.add([window], 1)
    await backend.advance(0.2)
    one = await counters.check_and_add([window], 1)  # waits for the first 2 units: 0.5 s
    three = await counters.check_and_add([window], 3)  # waits for all of them: 0.8 s
    backend.assert_wait(one.retry_after, 0.5)
    backend.assert_wait(three.retry_after, 0.8)
    await backend.advance(one.retry_after + 0.01)
    assert (await counters.check_and_add([window], 1)).allowed


async def test_an_amount_over_the_limit_itself_gets_a_finite_retry_after(backend: Backend) -> None:
    window = Window(backend.key("tpm"), limit=10, seconds=1.0)
    answer = await backend.state.counters.check_and_add([window], 11)
    assert not answer.allowed
    assert 0 < answer.retry_after <= 1.0


async def test_units_slide_out_of_the_window(backend: Backend) -> None:
    counters = backend.state.counters
    window = Window(backend.key("rpm"), limit=10, seconds=1.0)
    await counters.add([window], 4)
    await backend.advance(0.5)
    await counters.add([window], 2)
    await backend.advance(0.7)
    assert await counters.count(window) == 2
    await backend.advance(0.5)
    assert await counters.count(window) == 0


async def test_corrections_may_be_negative_and_go_over_the_limit(backend: Backend) -> None:
    counters = backend.state.counters
    window = Window(backend.key("tpm"), limit=10, seconds=1.0)
    assert (await counters.check_and_add([window], 9)).allowed  # the estimate
    await counters.add([window], -6)  # the actual usage was 3
    assert await counters.count(window) == 3
    assert (await counters.check_and_add([window], 7)).allowed
    await counters.add([window], 5)  # more than estimated: the truth is counted regardless
    answer = await counters.check_and_add([window], 1)
    assert (answer.allowed, answer.remaining) == (False, (-5,))


async def test_windows_sharing_a_key_count_the_amount_once(backend: Backend) -> None:
    counters = backend.state.counters
    minute = Window(backend.key("shared"), limit=5, seconds=1.0)
    hour = Window(backend.key("shared"), limit=50, seconds=3.0)
    assert (await counters.check_and_add([minute, hour], 2)).remaining == (3, 48)
    await backend.advance(1.5)
    assert (await counters.count(minute), await counters.count(hour)) == (0, 2)


async def test_check_and_add_refuses_a_negative_amount(backend: Backend) -> None:
    with pytest.raises(ValueError):
        await backend.state.counters.check_and_add([Window(backend.key("w"), 1, 1.0)], -1)


async def test_concurrent_checks_never_overshoot(backend: Backend) -> None:
    window = Window(backend.key("rpm"), limit=20, seconds=1.0)
    answers = await asyncio.gather(*(backend.state.counters.check_and_add([window], 1) for _ in range(200)))
    assert sum(a.allowed for a in answers) == 20
    assert await backend.state.counters.count(window) == 20


# --- reservations --------------------------------------------------------------------------------------


@reservations_contract
async def test_reserve_holds_and_reports_what_remains(backend: Backend) -> None:
    reservations = backend.state.reservations
    daily = Ceiling(backend.key("daily"), limit=10, ttl=5.0)
    answer = await reservations.reserve("r1", [daily], 4, ttl=1.0)
    assert (answer.allowed, answer.remaining, answer.retry_after) == (True, (6,), 0)
    assert await reservations.level(daily.key) == (0, 4)


@reservations_contract
async def test_one_refusing_ceiling_holds_nothing_anywhere(backend: Backend) -> None:
    reservations = backend.state.reservations
    team = Ceiling(backend.key("team"), limit=100, ttl=5.0)
    key = Ceiling(backend.key("key"), limit=5, ttl=5.0)
    await reservations.restore(key.key, 4, ttl=5.0)
    answer = await reservations.reserve("r1", [team, key], 2, ttl=1.0)
    assert (answer.allowed, answer.refused_key, answer.remaining) == (False, key.key, (100, 1))
    assert await reservations.level(team.key) == (0, 0)
    assert await reservations.level(key.key) == (4, 0)
    await reservations.settle("r1", 2)  # a refused reservation does not exist: nothing to settle
    assert await reservations.level(team.key) == (0, 0)


@reservations_contract
async def test_an_expired_hold_frees_the_ceiling(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=5.0)
    t0 = backend.now()
    assert (await reservations.reserve("crashed", [ceiling], 8, ttl=0.5)).allowed
    t1 = backend.now()
    await backend.advance(0.2)
    t2 = backend.now()
    refused = await reservations.reserve("next", [ceiling], 5, ttl=0.5)
    t3 = backend.now()
    assert not refused.allowed
    # The hold in the way lapses 0.5 s after the backend took it (its clock read within [t0, t1]), and
    # the refusal read the clock within [t2, t3]: exact on a fake clock, bounded on a real one.
    assert t0 + 0.5 - t3 - 0.02 <= refused.retry_after <= t1 + 0.5 - t2 + 0.02
    await backend.advance(0.4)
    assert await reservations.level(ceiling.key) == (0, 0)
    assert (await reservations.reserve("next", [ceiling], 5, ttl=0.5)).allowed


@reservations_contract
async def test_spend_alone_over_the_limit_retries_when_the_period_ends(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=2.0)
    await reservations.restore(ceiling.key, 9, ttl=1.5)
    for amount in (2, 50):  # over what is left, and over the limit itself: both finite
        answer = await reservations.reserve(f"r{amount}", [ceiling], amount, ttl=0.5)
        assert not answer.allowed
        backend.assert_wait(answer.retry_after, 1.5)


@reservations_contract
async def test_settle_commits_the_actual_cost_once(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=5.0)
    await reservations.reserve("r1", [ceiling], 4, ttl=1.0)
    await reservations.settle("r1", 1.5)
    assert await reservations.level(ceiling.key) == (1.5, 0)
    await reservations.settle("r1", 1.5)
    await reservations.release("r1")
    assert await reservations.level(ceiling.key) == (1.5, 0)


@reservations_contract
async def test_settle_reports_each_ceilings_committed_total_after_it(backend: Backend) -> None:
    reservations = backend.state.reservations
    daily, monthly = Ceiling(backend.key("daily"), 10, 5.0), Ceiling(backend.key("monthly"), 100, 5.0)
    await reservations.reserve("r0", [monthly], 1, ttl=1.0)
    await reservations.settle("r0", 2.0)
    await reservations.reserve("r1", [daily, monthly], 4, ttl=1.0)
    assert await reservations.settle("r1", 1.5) == {daily.key: 1.5, monthly.key: 3.5}
    assert await reservations.settle("r1", 1.5) == {}  # already closed: nothing committed now
    assert await reservations.settle("never", 1.0) == {}


@reservations_contract
async def test_settle_may_exceed_the_hold(backend: Backend) -> None:
    reservations = backend.state.reservations
    key, team = Ceiling(backend.key("key"), 10, 5.0), Ceiling(backend.key("team"), 10, 5.0)
    await reservations.reserve("r1", [key, team], 2, ttl=1.0)
    await reservations.settle("r1", 12)  # the real cost is the truth, even past the limit
    assert await reservations.level(key.key) == (12, 0)
    assert await reservations.level(team.key) == (12, 0)
    assert not (await reservations.reserve("r2", [key], 0.5, ttl=1.0)).allowed


@reservations_contract
async def test_release_drops_the_hold_and_commits_nothing(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=5.0)
    await reservations.reserve("r1", [ceiling], 4, ttl=1.0)
    await reservations.reserve("r2", [ceiling], 3, ttl=1.0)
    await reservations.release("r1")
    await reservations.release("r1")
    await reservations.settle("r1", 4)  # released is final
    assert await reservations.level(ceiling.key) == (0, 3)


@reservations_contract
async def test_settle_after_the_hold_expired_still_commits(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=5.0)
    await reservations.reserve("slow", [ceiling], 4, ttl=0.3)
    await backend.advance(0.5)
    assert await reservations.level(ceiling.key) == (0, 0)
    await reservations.settle("slow", 6)  # the upstream answered late: the spend happened
    await reservations.settle("slow", 6)
    assert await reservations.level(ceiling.key) == (6, 0)


@reservations_contract
async def test_restore_sets_the_committed_total_and_keeps_holds(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=5.0)
    await reservations.reserve("r1", [ceiling], 2, ttl=2.0)
    await reservations.settle("r1", 3)
    await reservations.reserve("r2", [ceiling], 2, ttl=2.0)
    await reservations.restore(ceiling.key, 7.5, ttl=1.0)
    assert await reservations.level(ceiling.key) == (7.5, 2)
    await backend.advance(1.2)  # the restored total lives for its ttl
    assert await reservations.level(ceiling.key) == (0, 2)


@reservations_contract
async def test_a_restorable_ceiling_without_a_level_is_unknown_not_zero(backend: Backend) -> None:
    reservations = backend.state.reservations
    lost = Ceiling(backend.key("lost"), limit=10, ttl=5.0, restorable=True)
    known = Ceiling(backend.key("known"), limit=10, ttl=5.0, restorable=True)
    plain = Ceiling(backend.key("plain"), limit=10, ttl=5.0)  # absent: zero, as ever
    await reservations.restore(known.key, 3, ttl=5.0, if_absent=True)
    answer = await reservations.reserve("r1", [plain, lost, known], 2, ttl=1.0)
    assert (answer.allowed, answer.unknown, answer.refused_key) == (False, (lost.key,), lost.key)
    for ceiling, committed in ((plain, 0), (lost, 0), (known, 3)):  # nothing held anywhere
        assert await reservations.level(ceiling.key) == (committed, 0)
    await reservations.settle("r1", 2)  # nothing was held, so nothing to settle
    assert await reservations.restore(lost.key, 4, ttl=5.0, if_absent=True)
    answer = await reservations.reserve("r1", [plain, lost, known], 2, ttl=1.0)  # the id is still free
    assert (answer.allowed, answer.unknown, answer.remaining) == (True, (), (8, 4, 5))
    assert await reservations.level(lost.key) == (4, 2)


@reservations_contract
async def test_restore_if_absent_never_overwrites_a_level(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=5.0, restorable=True)
    assert await reservations.restore(ceiling.key, 2, ttl=5.0, if_absent=True)
    assert (await reservations.reserve("r1", [ceiling], 1, ttl=1.0)).allowed
    await reservations.settle("r1", 1.5)  # a settle landing after another replica read the ledger
    assert not await reservations.restore(ceiling.key, 2, ttl=5.0, if_absent=True)  # that stale read
    assert await reservations.level(ceiling.key) == (3.5, 0)
    assert await reservations.restore(ceiling.key, 7, ttl=5.0)  # without if_absent: set, as before
    assert await reservations.level(ceiling.key) == (7, 0)


@reservations_contract
async def test_replicas_restoring_at_once_set_a_level_once(backend: Backend) -> None:
    reservations = backend.state.reservations
    key = backend.key("budget")
    restored = await asyncio.gather(
        *(reservations.restore(key, float(i), ttl=5.0, if_absent=True) for i in range(1, 21))
    )
    assert sum(restored) == 1
    assert await reservations.level(key) == (restored.index(True) + 1, 0)


@reservations_contract
async def test_a_restored_level_is_known_at_zero_until_its_ttl(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=1.0, restorable=True)
    await reservations.restore(ceiling.key, 0, ttl=1.0, if_absent=True)  # a window nobody spent in yet
    assert (await reservations.reserve("r1", [ceiling], 2, ttl=0.5)).allowed
    await reservations.release("r1")  # nothing spent, nothing held: still known, not rebuilt again
    assert (await reservations.reserve("r2", [ceiling], 2, ttl=0.5)).allowed
    await reservations.settle("r2", 0)
    assert not (await reservations.reserve("r3", [ceiling], 2, ttl=0.5)).unknown
    await reservations.release("r3")
    await backend.advance(1.2)  # the level's window is over: unknown again
    assert (await reservations.reserve("r4", [ceiling], 2, ttl=0.5)).unknown == (ceiling.key,)


@reservations_contract
async def test_committed_spend_lives_for_the_ceiling_ttl(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=1.0)
    await reservations.reserve("r1", [ceiling], 2, ttl=0.5)
    await reservations.settle("r1", 9)
    await backend.advance(0.6)
    assert await reservations.level(ceiling.key) == (9, 0)
    await backend.advance(0.6)
    assert await reservations.level(ceiling.key) == (0, 0)


@reservations_contract
async def test_reserving_an_id_twice_is_an_error(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=10, ttl=5.0)
    await reservations.reserve("r1", [ceiling], 1, ttl=1.0)
    with pytest.raises(ValueError):
        await reservations.reserve("r1", [ceiling], 1, ttl=1.0)
    await reservations.settle("r1", 1)
    with pytest.raises(ValueError):
        await reservations.reserve("r1", [ceiling], 1, ttl=1.0)
    assert await reservations.level(ceiling.key) == (1, 0)


@reservations_contract
async def test_concurrent_reservations_never_overshoot(backend: Backend) -> None:
    reservations = backend.state.reservations
    ceiling = Ceiling(backend.key("budget"), limit=2.0, ttl=60.0)  # exactly 20 holds of $0.10
    # Holds that outlast the burst: 200 transactions against one SQL row take seconds on a busy machine,
    # and a hold lapsing mid-burst would rightly admit one more.
    answers = await asyncio.gather(
        *(reservations.reserve(f"r{i}", [ceiling], 0.1, ttl=30.0) for i in range(200))
    )
    assert sum(a.allowed for a in answers) == 20
    committed, held = await reservations.level(ceiling.key)
    assert committed == 0
    assert held == pytest.approx(2.0)


# --- admissions: every window and a hold in one step ---------------------------------------------------


def slot(backend: Backend, name: str, ceiling: Ceiling, ttl: float = 1.0) -> Hold:
    """One concurrency slot on `ceiling`, under an id no other test uses."""
    return Hold(backend.key(name), (ceiling,), 1, ttl)


async def test_admit_adds_each_window_its_own_amount(backend: Backend) -> None:
    counters = backend.state.counters
    rpm = Window(backend.key("rpm"), limit=5, seconds=1.0)
    tpm = Window(backend.key("tpm"), limit=100, seconds=1.0)
    answer = await counters.admit([(rpm, 1), (tpm, 40)])
    assert (answer.allowed, answer.retry_after, answer.refused_key, answer.remaining) == (
        True,
        0,
        None,
        (4, 60),
    )
    assert (await counters.count(rpm), await counters.count(tpm)) == (1, 40)
    refused = await counters.admit([(rpm, 1), (tpm, 61)])
    assert (refused.allowed, refused.refused_key, refused.remaining) == (False, tpm.key, (4, 60))
    assert (await counters.count(rpm), await counters.count(tpm)) == (1, 40)
    hour = Window(rpm.key, limit=50, seconds=3.0)  # one key, two windows: one counter, added to once
    assert (await counters.admit([(rpm, 2), (hour, 2)])).remaining == (2, 47)
    assert await counters.admit([]) == Admission(True)


async def test_an_admitted_hold_is_released_and_settled_through_reservations(backend: Backend) -> None:
    counters, reservations = backend.state.counters, backend.state.reservations
    rpm = Window(backend.key("rpm"), limit=10, seconds=1.0)
    parallel = Ceiling(backend.key("parallel"), limit=2, ttl=5.0)
    first = await counters.admit([(rpm, 1)], slot(backend, "a", parallel), holds=reservations)
    assert (first.allowed, first.remaining) == (True, (9, 1))
    assert (await counters.admit([(rpm, 1)], slot(backend, "b", parallel), holds=reservations)).allowed
    assert await reservations.level(parallel.key) == (0, 2)
    full = await counters.admit([(rpm, 1)], slot(backend, "c", parallel), holds=reservations)
    assert (full.allowed, full.refused_key, full.remaining) == (False, parallel.key, (8, 0))
    await reservations.release(backend.key("a"))
    assert await reservations.level(parallel.key) == (0, 1)
    await reservations.settle(backend.key("b"), 0.5)  # like any hold: committed, and no longer held
    assert await reservations.level(parallel.key) == (0.5, 0)
    assert (await counters.admit([(rpm, 1)], slot(backend, "c", parallel), holds=reservations)).allowed
    assert await counters.count(rpm) == 3  # the refused admission counted nothing


async def test_finish_corrects_each_window_and_releases_the_admitted_hold_in_one_step(
    backend: Backend,
) -> None:
    counters, reservations = backend.state.counters, backend.state.reservations
    rpm = Window(backend.key("rpm"), limit=10, seconds=1.0)
    tpm, tpm_team = Window(backend.key("tpm"), 1000, 1.0), Window(backend.key("tpm-team"), 5000, 1.0)
    parallel = Ceiling(backend.key("parallel"), limit=1, ttl=5.0)
    windows = [(rpm, 1.0), (tpm, 40.0), (tpm_team, 40.0)]
    assert (await counters.admit(windows, slot(backend, "a", parallel), holds=reservations)).allowed
    assert not (await counters.admit(windows, slot(backend, "b", parallel), holds=reservations)).allowed
    await counters.finish([(tpm, 60.0), (tpm_team, -15.0), (rpm, 0.0)], backend.key("a"), holds=reservations)
    assert await reservations.level(parallel.key) == (0, 0)  # released: nothing committed, nothing held
    assert (await counters.count(rpm), await counters.count(tpm), await counters.count(tpm_team)) == (
        1,
        100,
        25,
    )
    await counters.finish([(tpm, -100.0)])  # no hold: a correction alone
    await counters.finish([], backend.key("a"), holds=reservations)  # a closed hold: nothing happens
    assert await counters.count(tpm) == 0 and await reservations.level(parallel.key) == (0, 0)
    assert (await counters.admit(windows, slot(backend, "b", parallel), holds=reservations)).allowed


async def test_finish_releases_only_in_its_own_backend(backend: Backend) -> None:
    with pytest.raises(ValueError):
        await backend.state.counters.finish([], backend.key("a"))


async def test_an_admitted_hold_lapses_by_its_ttl_and_a_late_settle_still_commits(backend: Backend) -> None:
    counters, reservations = backend.state.counters, backend.state.reservations
    ceiling = Ceiling(backend.key("parallel"), limit=1, ttl=5.0)
    crashed = slot(backend, "crashed", ceiling, ttl=0.5)
    assert (await counters.admit([], crashed, holds=reservations)).allowed
    await backend.advance(0.2)
    refused = await reservations.reserve(backend.key("next"), [ceiling], 1, ttl=0.5)
    assert not refused.allowed
    backend.assert_wait(refused.retry_after, 0.3)  # the admitted hold lapses by then
    await backend.advance(0.4)
    assert await reservations.level(ceiling.key) == (0, 0)
    assert (await reservations.reserve(backend.key("next"), [ceiling], 1, ttl=0.5)).allowed
    await reservations.settle(crashed.reservation_id, 2)  # the upstream answered late: the spend happened
    assert await reservations.level(ceiling.key) == (2, 1)


async def test_a_refusing_window_holds_nothing_and_a_refusing_ceiling_counts_nothing(
    backend: Backend,
) -> None:
    counters, reservations = backend.state.counters, backend.state.reservations
    rpm = Window(backend.key("rpm"), limit=10, seconds=1.0)
    tpm = Window(backend.key("tpm"), limit=100, seconds=1.0)
    key, team = Ceiling(backend.key("key"), 5, 5.0), Ceiling(backend.key("team"), 5, 5.0)
    hold = Hold(backend.key("r1"), (key, team), 1, 1.0)
    await counters.add([tpm], 95)
    by_window = await counters.admit([(rpm, 1), (tpm, 10)], hold, holds=reservations)
    assert (by_window.allowed, by_window.refused_key, by_window.remaining) == (False, tpm.key, (10, 5, 5, 5))
    assert (await reservations.level(key.key), await reservations.level(team.key)) == ((0, 0), (0, 0))
    await reservations.restore(team.key, 5, ttl=5.0)
    by_ceiling = await counters.admit([(rpm, 1), (tpm, 5)], hold, holds=reservations)
    assert (by_ceiling.allowed, by_ceiling.refused_key, by_ceiling.remaining) == (
        False,
        team.key,
        (10, 5, 5, 0),
    )
    assert (await counters.count(rpm), await counters.count(tpm)) == (0, 95)
    assert (await reservations.level(key.key), await reservations.level(team.key)) == ((0, 0), (5, 0))
    await reservations.settle(hold.reservation_id, 1)  # a refused hold does not exist: nothing to settle
    assert await reservations.level(key.key) == (0, 0)


async def test_admit_names_the_first_refusal_and_waits_for_every_one(backend: Backend) -> None:
    counters, reservations = backend.state.counters, backend.state.reservations
    window = Window(backend.key("rpm"), limit=1, seconds=1.0)
    roomy = Window(backend.key("roomy"), limit=10, seconds=1.0)
    ceiling = Ceiling(backend.key("parallel"), limit=1, ttl=5.0)
    await counters.add([window], 1)
    assert (await reservations.reserve(backend.key("blocker"), [ceiling], 1, ttl=1.5)).allowed
    await backend.advance(0.2)
    hold = slot(backend, "r", ceiling)
    both = await counters.admit([(window, 1)], hold, holds=reservations)
    assert (both.allowed, both.refused_key, both.remaining) == (False, window.key, (0, 0))
    backend.assert_wait(both.retry_after, 1.3)  # the ceiling's wait: the longer of the two
    alone = await counters.admit([(window, 1)])
    backend.assert_wait(alone.retry_after, 0.8)  # the window's own wait
    ceiling_only = await counters.admit([(roomy, 1)], hold, holds=reservations)
    assert (ceiling_only.refused_key, ceiling_only.remaining) == (ceiling.key, (10, 0))
    backend.assert_wait(ceiling_only.retry_after, 1.3)  # until the blocking hold lapses
    assert (await counters.count(window), await counters.count(roomy)) == (1, 0)
    assert await reservations.level(ceiling.key) == (0, 1)


async def test_admit_refuses_what_no_backend_can_admit(backend: Backend) -> None:
    counters, reservations = backend.state.counters, backend.state.reservations
    window = Window(backend.key("w"), limit=10, seconds=1.0)
    ceiling = Ceiling(backend.key("c"), limit=10, ttl=5.0)
    with pytest.raises(ValueError):
        await counters.admit([(window, -1)])  # corrections go through add()
    with pytest.raises(ValueError):
        await counters.admit([(window, 1), (Window(window.key, 20, 2.0), 2)])  # one counter, two amounts
    with pytest.raises(ValueError):
        await counters.admit([(window, 1)], slot(backend, "r", ceiling))  # a hold needs its store
    known = slot(backend, "known", ceiling)
    assert (await counters.admit([], known, holds=reservations)).allowed
    with pytest.raises(ValueError):
        await counters.admit([(window, 1)], known, holds=reservations)
    with pytest.raises(ValueError):
        await reservations.reserve(known.reservation_id, [ceiling], 1, ttl=1.0)  # one id space with reserve
    assert await counters.count(window) == 0
    assert await reservations.level(ceiling.key) == (0, 1)


async def test_concurrent_admissions_never_overshoot_a_window_or_a_ceiling(backend: Backend) -> None:
    counters, reservations = backend.state.counters, backend.state.reservations
    rpm = Window(backend.key("rpm"), limit=20, seconds=1.0)
    tpm = Window(backend.key("tpm"), limit=1000, seconds=1.0)
    roomy = Ceiling(backend.key("roomy"), limit=50, ttl=5.0)
    answers = await asyncio.gather(
        *(
            counters.admit([(rpm, 1), (tpm, 10)], slot(backend, f"a{i}", roomy, ttl=2.0), holds=reservations)
            for i in range(200)
        )
    )
    assert sum(a.allowed for a in answers) == 20
    assert (await counters.count(rpm), await counters.count(tpm)) == (20, 200)
    assert await reservations.level(roomy.key) == (0, 20)
    wide = Window(backend.key("wide"), limit=50, seconds=1.0)
    tight = Ceiling(backend.key("tight"), limit=5, ttl=5.0)
    answers = await asyncio.gather(
        *(
            counters.admit([(wide, 1)], slot(backend, f"b{i}", tight, ttl=2.0), holds=reservations)
            for i in range(200)
        )
    )
    assert sum(a.allowed for a in answers) == 5
    assert await counters.count(wide) == 5  # the refused 195 counted nothing
    assert await reservations.level(tight.key) == (0, 5)


# --- cache and ledger ----------------------------------------------------------------------------------


async def test_cache_keeps_values_for_their_ttl(backend: Backend) -> None:
    cache = backend.state.cache
    await cache.set(backend.key("a"), b"first", ttl=0.5)
    await cache.set(backend.key("a"), b"second", ttl=1.0)
    await cache.set(backend.key("b"), b"short", ttl=0.5)
    await backend.advance(0.7)
    assert await cache.get(backend.key("a")) == b"second"
    assert await cache.get(backend.key("b")) is None
    await cache.delete(backend.key("a"))
    await cache.delete(backend.key("never-set"))
    assert await cache.get(backend.key("a")) is None


async def test_ledger_appends_once_per_request_and_filters_by_time(backend: Backend) -> None:
    ledger = backend.state.ledger
    prefix = backend.key("req")
    start = datetime(2025, 6, 1, tzinfo=UTC)
    assert await ledger.append(spend(f"{prefix}-2", start + timedelta(minutes=2)))
    assert await ledger.append(spend(f"{prefix}-1", start + timedelta(minutes=1), cost=None))
    assert not await ledger.append(spend(f"{prefix}-1", start, cost=99.0))  # a retried write
    mine = [e for e in await ledger.entries() if e.request_id.startswith(prefix)]
    assert [(e.request_id, e.cost_usd) for e in mine] == [(f"{prefix}-1", None), (f"{prefix}-2", 0.01)]
    later = await ledger.entries(since=start + timedelta(minutes=2))
    assert [e.request_id for e in later if e.request_id.startswith(prefix)] == [f"{prefix}-2"]


# --- the in-process backend ----------------------------------------------------------------------------


async def test_memory_window_boundaries_are_exact() -> None:
    clock = FakeClock()
    counters = MemoryWindowCounters(clock)
    window = Window("k", limit=1, seconds=60)
    await counters.add([window], 1)
    await clock.advance(59.999)
    answer = await counters.check_and_add([window], 1)
    assert not answer.allowed
    assert answer.retry_after == pytest.approx(0.001)
    await clock.advance(0.001)
    assert (await counters.check_and_add([window], 1)).allowed


async def test_memory_over_limit_amount_retries_after_one_window() -> None:
    counters = MemoryWindowCounters(FakeClock())
    answer = await counters.check_and_add([Window("k", limit=5, seconds=60)], 6)
    assert answer.retry_after == 60


async def test_memory_counters_forget_expired_keys() -> None:
    clock = FakeClock()
    counters = MemoryWindowCounters(clock)
    for i in range(10_000):
        await counters.check_and_add([Window(f"k{i}", limit=5, seconds=1)], 1)
    assert len(counters) == 10_000
    await clock.advance(1)
    await counters.add([Window("survivor", limit=5, seconds=1)], 1)
    assert len(counters) == 1


class ElsewhereReservations:
    """A `Reservations` of some other backend, which an in-process admission cannot reach atomically."""

    async def reserve(self, reservation_id: str, ceilings: object, amount: float, ttl: float) -> Admission:
        raise AssertionError("never called")

    async def settle(self, reservation_id: str, actual: float) -> None:
        raise AssertionError("never called")

    async def release(self, reservation_id: str) -> None:
        raise AssertionError("never called")

    async def level(self, key: str) -> tuple[float, float]:
        raise AssertionError("never called")

    async def restore(self, key: str, committed: float, ttl: float, *, if_absent: bool = False) -> bool:
        raise AssertionError("never called")


async def test_memory_admit_takes_its_hold_in_the_reservations_given() -> None:
    clock = FakeClock()
    counters, reservations = MemoryWindowCounters(clock), MemoryReservations(clock)
    hold = Hold("r", (Ceiling("c", limit=1, ttl=60),), 1, ttl=10)
    with pytest.raises(ValueError):
        await counters.admit(
            [(Window("k", 1, 60), 1)], hold, holds=ElsewhereReservations()
        )  # not an in-process store
    assert (await counters.admit([(Window("k", 1, 60), 1)], hold, holds=reservations)).allowed
    assert await reservations.level("c") == (0, 1)
    await reservations.release("r")
    assert await reservations.level("c") == (0, 0)


async def test_memory_reservations_forget_lapsed_holds_and_ended_periods() -> None:
    clock = FakeClock()
    reservations = MemoryReservations(clock)
    for i in range(10_000):
        await reservations.reserve(f"r{i}", [Ceiling(f"c{i}", limit=5, ttl=2)], 1, ttl=1)
    await reservations.settle("r0", 1)
    assert len(reservations) == 20_000
    await clock.advance(1)  # holds lapse, but are kept for a late settle until their ceilings end
    assert await reservations.level("c1") == (0, 0)
    assert len(reservations) == 10_000
    await clock.advance(1)
    await reservations.level("c0")
    assert len(reservations) == 0
    await reservations.settle("r1", 1)  # too late: that ceiling's period is over
    assert await reservations.level("c1") == (0, 0)


async def test_memory_reused_id_gets_a_hold_with_its_own_ttl() -> None:
    clock = FakeClock()
    reservations = MemoryReservations(clock)
    ceiling = Ceiling("c", limit=10, ttl=3600)
    await reservations.reserve("r", [ceiling], 1, ttl=1)
    await clock.advance(2)
    await reservations.settle("r", 1)  # late: committed, and the lapsed record is no longer needed
    assert (await reservations.reserve("r", [ceiling], 4, ttl=1)).allowed
    await clock.advance(1)
    assert await reservations.level("c") == (1, 0)


async def test_memory_shortened_lifetimes_are_purged_on_time() -> None:
    clock = FakeClock()
    reservations, cache = MemoryReservations(clock), MemoryCache(clock)
    await reservations.restore("c", 5, ttl=3600)
    await reservations.restore("c", 5, ttl=1)
    await cache.set("k", b"v", ttl=3600)
    await cache.set("k", b"v", ttl=1)
    await clock.advance(1)
    await reservations.level("other")
    await cache.get("other")
    assert (len(reservations), len(cache)) == (0, 0)


async def test_memory_cache_forgets_expired_keys_and_stays_within_its_size() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock, max_bytes=10)
    for i in range(10_000):
        await cache.set(f"k{i}", b"", ttl=1)
    await clock.advance(1)
    await cache.set("a", b"12345", ttl=10)
    assert len(cache) == 1
    await cache.set("b", b"12345", ttl=10)
    assert await cache.get("a") == b"12345"  # now the most recently used
    await cache.set("c", b"123", ttl=10)
    assert (await cache.get("a"), await cache.get("b"), await cache.get("c")) == (b"12345", None, b"123")
    await cache.set("huge", b"x" * 11, ttl=10)
    assert await cache.get("huge") is None
    assert await cache.get("a") == b"12345"


@pytest.mark.parametrize("url", ["memory://somewhere", "memory:///path", "memory://?size=1", "redis://x"])
async def test_memory_backend_takes_no_options(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        await open_memory_state(url)
    assert exc.value.problems[0][0] == "shared_state"


async def test_memory_ledger_wants_an_aware_since() -> None:
    state = await open_memory_state("memory://")
    with pytest.raises(ValueError):
        await state.ledger.entries(since=datetime(2025, 1, 1))
