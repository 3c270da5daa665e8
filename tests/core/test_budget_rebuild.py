"""Budget counters the shared state lost are rebuilt from the ledger: once per window, never a guess.

The stage runs on fresh in-process reservations (a restarted gateway, a flushed Redis) over a real SQL
ledger on SQLite, read through the same `LedgerSpend` the app uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ferryman.core.attempts import AttemptLoop
from ferryman.core.budgets import (
    Budget,
    BudgetAlert,
    BudgetExceededError,
    Budgets,
    BudgetUnavailableError,
    SpendRecord,
)
from ferryman.core.caller import Caller, Limits
from ferryman.core.canonical import ChatRequest, Message, TextPart, Usage
from ferryman.core.estimate import estimate_input_tokens
from ferryman.core.exchange import Exchange
from ferryman.core.pipeline import Pipeline
from ferryman.core.pricing import Price
from ferryman.core.routing import Router
from ferryman.core.shared_state import SpendEntry
from ferryman.store.database import open_engine
from ferryman.store.ledger_spend import LedgerSpend
from ferryman.store.memory import MemoryReservations
from ferryman.store.migrate import ensure_schema
from ferryman.store.sql_ledger import SqlLedger
from ferryman.testing import Answer, ScriptedUpstream
from tests.core.conftest import RecordingObserver, target

PRICE = Price(input=1.0, output=2.0)  # $ per million tokens
NOW = datetime(2026, 12, 1, 22, 30, tzinfo=UTC)
TODAY = "budget:key:k1:daily:2026-12-01"


class CountedSpend:
    """The app's `LedgerSpend`, with each read remembered: which budget, since when."""

    def __init__(self, inner: LedgerSpend) -> None:
        self.inner = inner
        self.reads: list[tuple[str, str, datetime]] = []

    async def spent_since(self, budget: Budget, since: datetime) -> float:
        self.reads.append((budget.scope, budget.period, since))
        return await self.inner.spent_since(budget, since)


@pytest.fixture
async def sql(tmp_path: Path) -> AsyncIterator[SqlLedger]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ferryman.db'}"
    engine = open_engine(url)
    await ensure_schema(url, auto_migrate=True, engine=engine)
    yield SqlLedger(engine)
    await engine.dispose()


def caller(daily: float | None = None, monthly: float | None = None) -> Caller:
    limits = Limits(daily_budget_usd=daily, monthly_budget_usd=monthly)
    return Caller(key_alias="app", key_id="k1", key_limits=limits)


def exchange_for(who: Caller) -> Exchange:
    exchange = Exchange(request_id="req")
    messages = (Message(role="user", parts=(TextPart("x" * 400),)),)
    exchange.admit(who, ChatRequest(model="m", messages=messages, max_tokens=1000))
    return exchange


ESTIMATE = estimate_input_tokens(exchange_for(caller()).request)  # type: ignore[arg-type]
EACH = (ESTIMATE * 1.0 + 1000 * 2.0) / 1e6  # every request here costs exactly its worst case


def spent(cost: float, at: datetime = NOW - timedelta(hours=1), **who: str | None) -> SpendEntry:
    return SpendEntry(
        request_id=uuid.uuid4().hex,
        at=at,
        model="m",
        provider="scripted",
        deployment="d",
        key_id=who.get("key_id", "k1"),
        team_id=who.get("team_id"),
        end_user=who.get("end_user"),
        input_tokens=1,
        output_tokens=1,
        cached_tokens=0,
        cost_usd=cost,
    )


def build(
    record: SpendRecord,
    reservations: MemoryReservations | None = None,
    *,
    global_budget: tuple[float | None, float | None] = (None, None),
    end_user_budget: tuple[float | None, float | None] = (None, None),
    alerts: list[BudgetAlert] | None = None,
    tz: str = "UTC",
) -> tuple[Pipeline, ScriptedUpstream, MemoryReservations]:
    upstream = ScriptedUpstream()
    upstream.set_default(Answer.text("ok", usage=Usage(input_tokens=ESTIMATE, output_tokens=1000)))
    reservations = MemoryReservations() if reservations is None else reservations  # empty is falsy
    router = Router({"m": [target(upstream, price=PRICE)]})
    stage = Budgets(
        reservations,
        router,
        global_budget=global_budget,
        end_user_budget=end_user_budget,
        timezone=ZoneInfo(tz),
        on_alert=(alerts if alerts is not None else []).append,
        clock=lambda: NOW,
        record=record,
    )
    observer = RecordingObserver()
    return Pipeline([stage], AttemptLoop(router, observer), observer), upstream, reservations


async def outcomes(pipeline: Pipeline, who: Caller, count: int) -> list[str]:
    results = []
    for _ in range(count):
        try:
            await pipeline.chat(exchange_for(who))
            results.append("served")
        except BudgetExceededError:
            results.append("refused")
    return results


async def test_a_fresh_state_still_sees_the_days_spend(sql: SqlLedger) -> None:
    await sql.append_many(
        [
            spent(EACH),
            spent(EACH),
            spent(5 * EACH, at=datetime(2026, 11, 30, 23, 0, tzinfo=UTC)),  # yesterday: another window
            spent(5 * EACH, key_id="k2"),  # another key's
        ]
    )
    pipeline, upstream, reservations = build(LedgerSpend(sql))  # as after a restart or a flush
    assert await outcomes(pipeline, caller(daily=3.5 * EACH), 3) == ["served", "refused", "refused"]
    assert len(upstream.calls) == 1
    assert await reservations.level(TODAY) == pytest.approx((3 * EACH, 0))


async def test_windows_are_read_from_their_start_in_the_budgets_time_zone(sql: SqlLedger) -> None:
    # 22:30 UTC is 17:30 in New York: its day began at 05:00 UTC, its month on 1 December 05:00 UTC.
    await sql.append_many(
        [
            spent(EACH, at=datetime(2026, 12, 1, 4, 0, tzinfo=UTC)),
            spent(2 * EACH, at=NOW - timedelta(hours=2)),
        ]
    )
    record = CountedSpend(LedgerSpend(sql))
    pipeline, _, reservations = build(record, tz="America/New_York")
    await pipeline.chat(exchange_for(caller(daily=1.0, monthly=1.0)))
    start = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
    assert record.reads == [("key", "daily", start), ("key", "monthly", start)]
    assert await reservations.level(TODAY) == pytest.approx((3 * EACH, 0))
    assert await reservations.level("budget:key:k1:monthly:2026-12") == pytest.approx((3 * EACH, 0))


async def test_each_budget_is_rebuilt_from_its_own_spenders_spend(sql: SqlLedger) -> None:
    await sql.append_many(
        [
            spent(0.01, team_id="t"),  # k1 in team t
            spent(0.02, key_id="k2", team_id="t"),  # a teammate
            spent(0.04, end_user="ana"),  # k1 for ana
            spent(0.08, key_id="k2", end_user="ana"),  # another key's ana: not this budget's
            spent(0.16, key_id="k3"),  # nobody's here but the gateway's
        ]
    )
    pipeline, _, reservations = build(LedgerSpend(sql), global_budget=(10, None), end_user_budget=(10, None))
    team = Limits(daily_budget_usd=10)
    who = dataclasses.replace(caller(daily=10), team_id="t", team_limits=team, end_user="ana")
    await pipeline.chat(exchange_for(who))
    day = "daily:2026-12-01"
    assert await reservations.level(f"budget:key:k1:{day}") == pytest.approx((0.05 + EACH, 0))
    assert await reservations.level(f"budget:team:t:{day}") == pytest.approx((0.03 + EACH, 0))
    assert await reservations.level(f"budget:end_user:k1/ana:{day}") == pytest.approx((0.04 + EACH, 0))
    assert await reservations.level(f"budget:global:all:{day}") == pytest.approx((0.31 + EACH, 0))


async def test_one_ledger_read_per_budget_window_however_many_requests(sql: SqlLedger) -> None:
    record = CountedSpend(LedgerSpend(sql))
    pipeline, upstream, _ = build(record, global_budget=(100, None))
    who = caller(daily=100, monthly=100)
    await asyncio.gather(*(pipeline.chat(exchange_for(who)) for _ in range(20)))  # a window's first burst
    await outcomes(pipeline, who, 5)
    assert len(upstream.calls) == 25
    assert sorted((scope, period) for scope, period, _ in record.reads) == [
        ("global", "daily"),
        ("key", "daily"),
        ("key", "monthly"),
    ]


async def test_alert_flags_are_claimed_without_the_ledger(sql: SqlLedger) -> None:
    alerts: list[BudgetAlert] = []
    record = CountedSpend(LedgerSpend(sql))
    pipeline, _, _ = build(record, alerts=alerts)
    assert await outcomes(pipeline, caller(daily=5 * EACH), 6) == ["served"] * 5 + ["refused"]
    assert [alert.threshold for alert in alerts] == [0.8, 1.0]  # flags are not budgets: never unknown
    assert [(scope, period) for scope, period, _ in record.reads] == [("key", "daily")]


async def test_a_ledger_that_cannot_be_read_refuses_with_503(sql: SqlLedger, tmp_path: Path) -> None:
    unreadable = SqlLedger(open_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'ferryman.db'}"))
    reservations = MemoryReservations()
    pipeline, upstream, _ = build(LedgerSpend(unreadable), reservations)
    with pytest.raises(BudgetUnavailableError) as refused:
        await pipeline.chat(exchange_for(caller(daily=1.0)))
    assert (refused.value.status, refused.value.type, refused.value.code) == (
        503,
        "api_error",
        "budget_unavailable",
    )
    assert "daily budget of key 'app'" in refused.value.message
    assert upstream.calls == []
    assert await reservations.level(TODAY) == (0, 0)  # no guess was stored: the next request reads again
    await sql.append(spent(0.5))
    pipeline, _, _ = build(LedgerSpend(sql), reservations)
    assert await outcomes(pipeline, caller(daily=0.5 + 1.5 * EACH), 2) == ["served", "refused"]


async def test_a_level_another_replica_restored_meanwhile_is_not_overwritten(sql: SqlLedger) -> None:
    await sql.append(spent(0.25))
    reservations = MemoryReservations()
    other, _, _ = build(LedgerSpend(sql), reservations)  # a second replica on the same shared state

    class RacedSpend:
        """A slow ledger read: meanwhile the other replica rebuilds the level and serves a request
        whose spend is in the level but not yet in the ledger."""

        async def spent_since(self, budget: Budget, since: datetime) -> float:
            total = await LedgerSpend(sql).spent_since(budget, since)
            await other.chat(exchange_for(caller(daily=10)))
            return total

    pipeline, _, _ = build(RacedSpend(), reservations)
    await pipeline.chat(exchange_for(caller(daily=10)))
    assert await reservations.level(TODAY) == pytest.approx((0.25 + 2 * EACH, 0))
