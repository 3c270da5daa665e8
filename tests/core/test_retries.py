"""Retries of the same deployment: which failures, after how long, and within the retry budget."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from ferryman.core.attempts import Decision, Failure
from ferryman.core.exchange import Exchange
from ferryman.core.retries import RetryBudget, RetryRules, backoff_delay, parse_retry_after
from ferryman.errors import UpstreamConnectionError, UpstreamStatusError
from ferryman.testing import Answer, Fail, ScriptedUpstream, Stream
from tests.core.conftest import RecordingObserver, chat_exchange
from tests.core.resilience import SleepRecorder, resilient_pipeline


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_5xx_is_retried_on_the_same_deployment_then_answers() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.script(Fail.status(503))
    sleep, observer = SleepRecorder(), RecordingObserver()
    exchange = chat_exchange("hi")
    response = await resilient_pipeline({"m": [a, b]}, sleep=sleep, observer=observer).chat(exchange)
    assert response.message.text == "echo: hi"
    assert len(a.calls) == 2 and b.calls == []
    assert exchange.deployment == "a" and exchange.attempts == 2
    assert sleep.waits == [0.25]  # the first retry's ceiling: base_delay
    assert observer.events == [("started", 1), ("failed:status_5xx", 1), ("started", 2), ("settled", 2)]
    assert observer.afters == [None, "retry"]


@pytest.mark.parametrize(
    "failure",
    [Fail.status(429), Fail.status(500), Fail.timeout(), Fail.connection()],
    ids=["429", "500", "timeout", "connection"],
)
async def test_every_transient_failure_is_retried(failure: Fail) -> None:
    a = ScriptedUpstream("a")
    a.script(failure)
    await resilient_pipeline({"m": [a]}).chat(chat_exchange())
    assert len(a.calls) == 2


async def test_the_upstreams_retry_after_is_waited_for_instead_of_the_backoff() -> None:
    a = ScriptedUpstream("a")
    a.script(Fail.status(429, retry_after=1.5))
    sleep = SleepRecorder()
    await resilient_pipeline({"m": [a]}, sleep=sleep).chat(chat_exchange())
    assert sleep.waits == [1.5]
    assert len(a.calls) == 2


async def test_a_retry_after_beyond_the_cap_moves_to_the_next_deployment_at_once() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.script(Fail.status(429, retry_after=30.0))
    sleep = SleepRecorder()
    exchange = chat_exchange()
    await resilient_pipeline({"m": [a, b]}, rules=RetryRules(max_delay=5.0), sleep=sleep).chat(exchange)
    assert sleep.waits == []
    assert len(a.calls) == 1 and len(b.calls) == 1
    assert exchange.deployment == "b"


async def test_a_retry_after_beyond_the_cap_on_the_only_deployment_reaches_the_client() -> None:
    a = ScriptedUpstream("a")
    a.script(Fail.status(429, retry_after=30.0))
    with pytest.raises(UpstreamStatusError) as caught:
        await resilient_pipeline({"m": [a]}).chat(chat_exchange())
    assert caught.value.status == 429 and caught.value.retry_after == 30.0
    assert len(a.calls) == 1


async def test_the_backoff_doubles_up_to_its_cap() -> None:
    a = ScriptedUpstream("a")
    a.script(Fail.status(502), times=5)
    sleep = SleepRecorder()
    rules = RetryRules(max_attempts_per_deployment=6, base_delay=0.5, max_delay=3.0)
    await resilient_pipeline({"m": [a]}, rules=rules, sleep=sleep).chat(chat_exchange())
    assert sleep.waits == [0.5, 1.0, 2.0, 3.0, 3.0]  # the jitter's ceilings (HighJitter draws them)
    assert len(a.calls) == 6


def test_full_jitter_draws_anywhere_below_the_ceiling() -> None:
    rng = random.Random(7)
    for retry, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (6, 5.0), (60, 5.0)]:
        draws = [backoff_delay(retry, 0.25, 5.0, rng) for _ in range(400)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert min(draws) < ceiling * 0.1 and max(draws) > ceiling * 0.9  # spread over the whole range


async def test_a_deployment_gets_max_attempts_then_the_next_one_is_tried() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.set_default(Fail.status(500))
    b.script(Fail.status(500))
    exchange, observer = chat_exchange(), RecordingObserver()
    rules = RetryRules(max_attempts_per_deployment=3)
    await resilient_pipeline({"m": [a, b]}, rules=rules, observer=observer).chat(exchange)
    assert len(a.calls) == 3 and len(b.calls) == 2
    assert exchange.attempts == 5 and exchange.deployment == "b"
    assert observer.afters == [None, "retry", "retry", "next", "retry"]


async def test_client_errors_are_never_retried() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.script(Fail.status(400, "unknown parameter"))
    with pytest.raises(UpstreamStatusError):
        await resilient_pipeline({"m": [a, b]}).chat(chat_exchange())
    assert len(a.calls) == 1 and b.calls == []


async def test_a_malformed_answer_moves_to_the_next_deployment_without_a_retry() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.script(Fail.error(UpstreamConnectionError("not JSON", provider="scripted", code="upstream_malformed")))
    exchange = chat_exchange()
    await resilient_pipeline({"m": [a, b]}).chat(exchange)
    assert len(a.calls) == 1 and len(b.calls) == 1


async def test_a_stream_that_fails_before_its_first_batch_is_retried() -> None:
    a = ScriptedUpstream("a")
    a.script(Fail.status(503), Stream.text("x y", chunks=2))
    exchange = chat_exchange(stream=True)
    batches = [batch async for batch in await resilient_pipeline({"m": [a]}).stream(exchange)]
    assert batches and a.streams_opened == 2 == a.streams_closed


async def test_a_stream_that_fails_after_its_first_batch_is_not_retried() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.script(Stream.text("a b c d", chunks=4, fail_after=2))
    sleep = SleepRecorder()
    exchange = chat_exchange(stream=True)
    answer_stream = await resilient_pipeline({"m": [a, b]}, sleep=sleep).stream(exchange)
    received = 0
    with pytest.raises(UpstreamConnectionError):
        async for _ in answer_stream:
            received += 1
    assert received == 2
    assert a.streams_opened == 1 and b.calls == [] and sleep.waits == []
    assert exchange.attempts == 1


async def test_a_retry_that_would_outlast_the_deadline_moves_on_instead() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.script(Fail.status(429, retry_after=2.0))
    sleep = SleepRecorder()
    exchange = chat_exchange()
    exchange.deadline = time.perf_counter() + 1.0
    await resilient_pipeline({"m": [a, b]}, sleep=sleep).chat(exchange)
    assert sleep.waits == [] and len(b.calls) == 1


async def test_the_retry_budget_caps_retries_under_a_storm() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, window_seconds=10, min_per_second=0.0, clock=clock)
    a = ScriptedUpstream("a")
    a.set_default(Fail.status(503))
    pipeline = resilient_pipeline({"m": [a]}, budget=budget)
    for _ in range(100):
        with pytest.raises(UpstreamStatusError):
            await pipeline.chat(chat_exchange())
    assert len(a.calls) == 120  # 100 first attempts, and retries for 20 % of them: never 200
    assert budget.counts == (100, 20)


async def test_the_budget_floor_lets_a_quiet_gateway_retry() -> None:
    budget = RetryBudget(ratio=0.2, window_seconds=10, min_per_second=1.0, clock=FakeClock())
    a = ScriptedUpstream("a")
    a.script(Fail.status(503))
    await resilient_pipeline({"m": [a]}, budget=budget).chat(chat_exchange())  # 0.2 of 1 alone: no retry
    assert len(a.calls) == 2


async def test_a_retry_the_budget_refuses_tries_the_next_deployment() -> None:
    budget = RetryBudget(ratio=0.0, window_seconds=10, min_per_second=0.0, clock=FakeClock())
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.script(Fail.status(503))
    exchange = chat_exchange()
    await resilient_pipeline({"m": [a, b]}, budget=budget).chat(exchange)
    assert len(a.calls) == 1 and len(b.calls) == 1


def test_the_budget_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, window_seconds=10, min_per_second=0.0, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    clock.now += 5
    budget.record_request()
    budget.record_request()
    assert budget.try_spend()  # 6 requests in the window now afford 3 retries
    assert not budget.try_spend()
    clock.now += 6  # the first second's 4 requests and 2 retries have left the window
    assert budget.counts == (2, 1)
    assert not budget.try_spend()  # 2 requests afford 1 retry, already taken
    clock.now += 10
    assert budget.counts == (0, 0)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    later = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
    assert parse_retry_after(format_datetime(later, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after("Sun, 01 Mar 2026 11:59:00 GMT", now=now) == 0.0  # already passed
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("inf") is None


async def test_the_loop_budgets_any_policys_retries() -> None:
    class AlwaysRetry:
        def decide(self, exchange: Exchange, failure: Failure) -> Decision:
            return Decision("retry")

    budget = RetryBudget(ratio=0.0, window_seconds=10, min_per_second=0.3, clock=FakeClock())  # 3 retries
    a = ScriptedUpstream("a")
    a.set_default(Fail.status(500))
    with pytest.raises(UpstreamStatusError):
        await resilient_pipeline({"m": [a]}, policy=AlwaysRetry(), budget=budget).chat(chat_exchange())
    assert len(a.calls) == 4


async def test_a_whole_answer_after_retries_is_settled_once() -> None:
    a = ScriptedUpstream("a")
    a.script(Fail.timeout(), Answer.text("done"))
    observer = RecordingObserver()
    exchange = chat_exchange()
    await resilient_pipeline({"m": [a]}, observer=observer).chat(exchange)
    assert [event for event, _ in observer.events].count("settled") == 1
    assert exchange.answered_by == "upstream" and exchange.usage is not None
