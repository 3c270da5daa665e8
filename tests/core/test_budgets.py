"""Budgets as a stage, socket-free: reservations never overshoot, settle to the real cost, alert once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ferryman.core.attempts import AttemptLoop
from ferryman.core.budgets import Budget, BudgetAlert, BudgetExceededError, Budgets
from ferryman.core.caller import Caller, Limits
from ferryman.core.canonical import ChatRequest, Message, TextPart, Usage
from ferryman.core.estimate import estimate_input_tokens
from ferryman.core.exchange import Exchange
from ferryman.core.pipeline import Pipeline
from ferryman.core.pricing import Price
from ferryman.core.routing import Router
from ferryman.errors import PermissionDeniedError, SharedStateUnavailableError, UpstreamStatusError
from ferryman.store.memory import MemoryReservations
from ferryman.testing import Answer, ScriptedUpstream
from tests.core.conftest import RecordingObserver, target

PRICE = Price(input=1.0, output=2.0)  # $ per million tokens
NOW = datetime(2026, 12, 1, 22, 30, tzinfo=UTC)


def budgeted(daily: float | None = None, monthly: float | None = None) -> Caller:
    return Caller(
        key_alias="app", key_id="k1", key_limits=Limits(daily_budget_usd=daily, monthly_budget_usd=monthly)
    )


def exchange_for(caller: Caller, max_tokens: int | None = 1000) -> Exchange:
    exchange = Exchange(request_id="req")
    messages = (Message(role="user", parts=(TextPart("x" * 400),)),)  # ≈ 104 input tokens estimated
    exchange.admit(caller, ChatRequest(model="m", messages=messages, max_tokens=max_tokens))
    return exchange


def build(
    upstream: ScriptedUpstream, price: Price | None = PRICE, alerts: list[BudgetAlert] | None = None
) -> tuple[Pipeline, Budgets, MemoryReservations]:
    reservations = MemoryReservations()
    router = Router({"m": [target(upstream, price=price)]})
    stage = Budgets(
        reservations,
        router,
        on_alert=(alerts if alerts is not None else []).append,
        clock=lambda: NOW,
    )
    observer = RecordingObserver()
    return Pipeline([stage], AttemptLoop(router, observer), observer), stage, reservations


async def test_concurrent_requests_never_overshoot_the_budget() -> None:
    upstream = ScriptedUpstream()
    upstream.set_default(Answer.text("ok", usage=Usage(input_tokens=100, output_tokens=1000)))
    pipeline, stage, reservations = build(upstream)
    worst = stage.worst_case(exchange_for(budgeted(daily=1.0)))
    budget = 20 * worst + worst / 2  # room for 20 worst cases, not 21
    caller = budgeted(daily=budget)
    results = await asyncio.gather(
        *(pipeline.chat(exchange_for(caller)) for _ in range(100)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(admitted) == 20
    assert all(isinstance(r, BudgetExceededError) for r in refused)
    assert len(upstream.calls) == 20  # a refused request never reaches the upstream
    committed, held = await reservations.level("budget:key:k1:daily:2026-12-01")
    assert committed == pytest.approx(20 * (100 * 1.0 + 1000 * 2.0) / 1e6)
    assert committed <= budget and held == 0


async def test_a_refusal_is_openai_insufficient_quota_naming_the_budget_and_its_reset() -> None:
    pipeline, _, _ = build(ScriptedUpstream())
    with pytest.raises(BudgetExceededError) as refused:
        await pipeline.chat(exchange_for(budgeted(daily=0.000001)))
    error = refused.value
    assert (error.status, error.type, error.code) == (429, "insufficient_quota", "budget_exceeded")
    assert "daily budget of key 'app'" in error.message
    assert error.resets_at == datetime(2026, 12, 2, tzinfo=UTC)
    assert error.retry_after == pytest.approx(90 * 60)


async def test_the_hold_settles_to_the_real_cost_and_frees_the_rest() -> None:
    upstream = ScriptedUpstream()
    upstream.script(Answer.text("ok", usage=Usage(input_tokens=10, output_tokens=5)))
    pipeline, _, reservations = build(upstream)
    await pipeline.chat(exchange_for(budgeted(daily=1.0, monthly=10.0)))
    assert await reservations.level("budget:key:k1:daily:2026-12-01") == (pytest.approx(20e-6), 0)
    assert await reservations.level("budget:key:k1:monthly:2026-12") == (pytest.approx(20e-6), 0)


async def test_a_failed_request_spends_nothing() -> None:
    from ferryman.testing import Fail

    upstream = ScriptedUpstream()
    upstream.script(Fail.status(400))
    pipeline, _, reservations = build(upstream)
    with pytest.raises(UpstreamStatusError):
        await pipeline.chat(exchange_for(budgeted(daily=1.0)))
    assert await reservations.level("budget:key:k1:daily:2026-12-01") == (0, 0)


async def test_without_max_tokens_the_models_longest_answer_is_reserved() -> None:
    _, stage, _ = build(ScriptedUpstream(), price=Price(1.0, 2.0, max_output_tokens=64_000))
    assert stage.worst_case(exchange_for(budgeted(daily=1.0), max_tokens=None)) == pytest.approx(
        (104 + 64_000 * 2.0) / 1e6, rel=0.05
    )


async def test_an_unpriced_model_cannot_be_used_on_a_budget() -> None:
    pipeline, _, _ = build(ScriptedUpstream(), price=None)
    with pytest.raises(PermissionDeniedError) as refused:
        await pipeline.chat(exchange_for(budgeted(daily=1.0)))
    assert refused.value.code == "model_unpriced"
    await pipeline.chat(exchange_for(budgeted()))  # no budget: served, and counted as unpriced


async def test_each_threshold_alerts_once_per_window() -> None:
    # Each request spends exactly its worst case, so five of them fill the budget to 100 %.
    estimate = estimate_input_tokens(exchange_for(budgeted()).request)  # type: ignore[arg-type]
    upstream = ScriptedUpstream()
    upstream.set_default(Answer.text("ok", usage=Usage(input_tokens=estimate, output_tokens=100_000)))
    alerts: list[BudgetAlert] = []
    pipeline, stage, _ = build(upstream, alerts=alerts)
    each = stage.worst_case(exchange_for(budgeted(daily=1.0), max_tokens=100_000))
    caller = budgeted(daily=5 * each)
    outcomes = []
    for _ in range(7):  # crosses 80 % on the 4th, 100 % on the 5th; the 6th and 7th are refused
        try:
            await pipeline.chat(exchange_for(caller, max_tokens=100_000))
            outcomes.append("served")
        except BudgetExceededError:
            outcomes.append("refused")
    assert outcomes == ["served"] * 5 + ["refused"] * 2
    assert [(a.threshold, a.budget.period) for a in alerts] == [(0.8, "daily"), (1.0, "daily")]
    assert alerts[0].spent == pytest.approx(4 * each)


def test_windows_follow_the_configured_time_zone() -> None:
    stage = Budgets(
        MemoryReservations(), Router({}), timezone=ZoneInfo("America/New_York"), clock=lambda: NOW
    )
    assert stage.resets_at("daily", NOW) == datetime(2026, 12, 2, 5, tzinfo=UTC)  # midnight in New York
    assert stage.resets_at("monthly", NOW) == datetime(2027, 1, 1, 5, tzinfo=UTC)


def test_each_window_is_worked_out_anew_once_time_leaves_it() -> None:
    """Windows are kept between requests; a request past a window's end (or before its start, for a
    clock set back) gets the window it falls in."""
    stage = Budgets(MemoryReservations(), Router({}), timezone=ZoneInfo("America/New_York"))
    budget = Budget("key", "k1", "app", "daily", 1.0)
    evening = datetime(2026, 12, 2, 4, 59, tzinfo=UTC)  # 23:59 on Dec 1 in New York
    after_midnight, month_later = evening + timedelta(minutes=2), evening + timedelta(days=31)
    assert stage.window_key(budget, evening).endswith(":daily:2026-12-01")
    assert stage.window_key(budget, after_midnight).endswith(":daily:2026-12-02")
    assert stage.window_start("daily", after_midnight) == datetime(2026, 12, 2, 5, tzinfo=UTC)
    assert stage.window_key(budget, evening).endswith(":daily:2026-12-01")  # back again
    assert stage.resets_at("monthly", month_later) == datetime(2027, 2, 1, 5, tzinfo=UTC)
    assert stage.resets_at("monthly", evening) == datetime(2027, 1, 1, 5, tzinfo=UTC)  # back again


class UnreachableOnSettle(MemoryReservations):
    """Reserves in memory, then loses the shared state before the request settles."""

    async def settle(self, reservation_id: str, actual: float) -> None:
        raise SharedStateUnavailableError("shared state (Redis) failed: ConnectionError")


async def test_an_answered_request_keeps_its_answer_when_the_settle_cannot_reach_the_state() -> None:
    upstream = ScriptedUpstream()
    upstream.set_default(Answer.text("ok", usage=Usage(input_tokens=100, output_tokens=10)))
    reservations = UnreachableOnSettle()
    router = Router({"m": [target(upstream, price=PRICE)]})
    observer = RecordingObserver()
    stage = Budgets(reservations, router, clock=lambda: NOW)
    pipeline = Pipeline([stage], AttemptLoop(router, observer), observer)
    response = await pipeline.chat(exchange_for(budgeted(daily=1.0)))
    assert response.usage is not None and response.usage.output_tokens == 10
    _committed, held = await reservations.level("budget:key:k1:daily:2026-12-01")
    assert held > 0  # the worst case stays held (until its TTL) rather than the spend being forgotten


async def test_a_budget_that_refuses_before_its_spend_reaches_100_percent_still_says_so_once() -> None:
    # Answers spend a tenth of their worst case, so the budget refuses at about 80 % spent: a level
    # that spend alone never lifts to 100 %. The refusal announces the top threshold, once.
    estimate = estimate_input_tokens(exchange_for(budgeted()).request)  # type: ignore[arg-type]
    upstream = ScriptedUpstream()
    upstream.set_default(Answer.text("ok", usage=Usage(input_tokens=estimate, output_tokens=10_000)))
    alerts: list[BudgetAlert] = []
    pipeline, stage, reservations = build(upstream, alerts=alerts)
    worst = stage.worst_case(exchange_for(budgeted(daily=1.0), max_tokens=100_000))
    spent_each = PRICE.cost(Usage(input_tokens=estimate, output_tokens=10_000))
    limit = 5 * worst + spent_each / 2
    caller = budgeted(daily=limit)
    outcomes = []
    for _ in range(60):
        try:
            await pipeline.chat(exchange_for(caller, max_tokens=100_000))
            outcomes.append("served")
        except BudgetExceededError:
            outcomes.append("refused")
    served = outcomes.count("served")
    assert outcomes == ["served"] * served + ["refused"] * (60 - served) and served < 60
    committed, _ = await reservations.level("budget:key:k1:daily:2026-12-01")
    assert 0.8 * limit <= committed < 0.9 * limit
    assert [a.threshold for a in alerts] == [0.8, 1.0]  # 80 % by spend, 100 % by the first refusal only
    assert alerts[1].spent == pytest.approx(committed)


class CountingLevels(MemoryReservations):
    """Counts `level` calls: a settle that reports its levels should leave none to make."""

    levels = 0

    async def level(self, key: str) -> tuple[float, float]:
        self.levels += 1
        return await super().level(key)


async def test_a_settled_request_watches_its_thresholds_without_reading_levels_again() -> None:
    upstream = ScriptedUpstream()
    upstream.set_default(Answer.text("ok", usage=Usage(input_tokens=100, output_tokens=10)))
    reservations, alerts = CountingLevels(), list[BudgetAlert]()
    router = Router({"m": [target(upstream, price=PRICE)]})
    observer = RecordingObserver()
    stage = Budgets(reservations, router, clock=lambda: NOW, on_alert=alerts.append)
    pipeline = Pipeline([stage], AttemptLoop(router, observer), observer)
    spent = PRICE.cost(Usage(input_tokens=100, output_tokens=10))
    caller = budgeted(daily=10.0, monthly=spent * 1.1)  # the monthly budget crosses 80 % at once
    await pipeline.chat(exchange_for(caller, max_tokens=10))
    assert reservations.levels == 0
    assert [(a.threshold, a.budget.period) for a in alerts] == [(0.8, "monthly")]
