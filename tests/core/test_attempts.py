"""The attempt loop, socket-free: fallback order, give-up, health, policies, streams and accounting."""

from __future__ import annotations

import pytest

from ferryman.core.attempts import Decision, Failure, classify
from ferryman.core.breaker import BreakerConfig
from ferryman.core.canonical import Usage
from ferryman.core.deployment_health import FAILING_AFTER, DeploymentHealth
from ferryman.core.exchange import Exchange
from ferryman.errors import (
    ProviderError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ferryman.testing import Answer, Fail, ScriptedUpstream, Stream
from tests.core.conftest import RecordingObserver, build_pipeline, chat_exchange

OPENS_AFTER = BreakerConfig().failure_threshold  # consecutive failures that open a circuit


def upstreams(*labels: str) -> list[ScriptedUpstream]:
    return [ScriptedUpstream(label) for label in labels]


async def test_a_retryable_failure_falls_back_in_order() -> None:
    a, b, c = upstreams("a", "b", "c")
    a.script(Fail.status(503))
    b.script(Fail.timeout())
    observer = RecordingObserver()
    exchange = chat_exchange("hi")
    response = await build_pipeline([a, b, c], observer=observer).chat(exchange)
    assert response.message.text == "echo: hi"
    assert [len(u.calls) for u in (a, b, c)] == [1, 1, 1]
    assert exchange.attempts == 3 and exchange.deployment == "c"
    assert observer.events == [
        ("started", 1),
        ("failed:status_5xx", 1),
        ("started", 2),
        ("failed:timeout", 2),
        ("started", 3),
        ("settled", 3),
    ]


async def test_a_non_retryable_failure_stops_the_loop() -> None:
    a, b = upstreams("a", "b")
    a.script(Fail.status(400, "unknown parameter"))
    with pytest.raises(UpstreamStatusError) as caught:
        await build_pipeline([a, b]).chat(chat_exchange())
    assert caught.value.status == 400
    assert b.calls == []


async def test_the_last_failure_is_raised_when_every_deployment_fails() -> None:
    a, b = upstreams("a", "b")
    a.script(Fail.status(502))
    b.script(Fail.connection("refused"))
    with pytest.raises(UpstreamConnectionError, match="refused"):
        await build_pipeline([a, b]).chat(chat_exchange())


async def test_an_unhealthy_deployment_is_skipped_while_another_can_answer() -> None:
    a, b = upstreams("a", "b")
    health = DeploymentHealth()
    for _ in range(OPENS_AFTER):
        health.record_failure("a", "status_5xx")
    exchange = chat_exchange()
    await build_pipeline([a, b], health=health).chat(exchange)
    assert a.calls == [] and len(b.calls) == 1
    assert exchange.deployment == "b"


async def test_an_unhealthy_deployment_is_still_the_last_resort() -> None:
    a, b = upstreams("a", "b")
    b.script(Fail.status(503))
    health = DeploymentHealth()
    for _ in range(OPENS_AFTER):
        health.record_failure("a", "timeout")
    exchange = chat_exchange()
    await build_pipeline([a, b], health=health).chat(exchange)
    assert len(b.calls) == 1 and len(a.calls) == 1
    assert exchange.deployment == "a"
    assert health.status("a").state == "healthy"  # its answer ends the outage


async def test_client_errors_leave_health_alone() -> None:
    (a,) = upstreams("a")
    a.script(Fail.status(400), times=FAILING_AFTER + 1)
    pipeline = build_pipeline([a])
    for _ in range(FAILING_AFTER + 1):
        with pytest.raises(UpstreamStatusError):
            await pipeline.chat(chat_exchange())
    assert pipeline.attempts.health.status("a").failures == 0


async def test_a_policy_may_retry_the_same_deployment_after_a_delay() -> None:
    a, b = upstreams("a", "b")
    a.script(Fail.status(429, retry_after=2.0))
    waited: list[float] = []

    class RetryAfter:
        def decide(self, exchange: Exchange, failure: Failure) -> Decision:
            if failure.attempt.number == 1 and isinstance(failure.error, UpstreamStatusError):
                return Decision("retry", delay=failure.error.retry_after or 0.0)
            return Decision("give_up")

    pipeline = build_pipeline([a, b], policy=RetryAfter())

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    pipeline.attempts._sleep = sleep
    exchange = chat_exchange()
    await pipeline.chat(exchange)
    assert waited == [2.0]
    assert len(a.calls) == 2 and b.calls == []
    assert exchange.attempts == 2


async def test_the_policy_sees_what_remains() -> None:
    a, b = upstreams("a", "b")
    a.script(Fail.status(500))
    b.script(Fail.status(500))
    seen: list[tuple[int, str, int]] = []

    class Recording:
        def decide(self, exchange: Exchange, failure: Failure) -> Decision:
            seen.append((failure.attempt.number, failure.kind, failure.remaining))
            return Decision("next")

    with pytest.raises(UpstreamStatusError):
        await build_pipeline([a, b], policy=Recording()).chat(chat_exchange())
    assert seen == [(1, "status_5xx", 1), (2, "status_5xx", 0)]


async def test_a_stream_that_fails_before_its_first_batch_falls_back() -> None:
    a, b = upstreams("a", "b")
    a.script(Fail.status(529))
    b.script(Stream.text("x y", chunks=2))
    exchange = chat_exchange(stream=True)
    answer_stream = await build_pipeline([a, b]).stream(exchange)
    batches = [batch async for batch in answer_stream]
    assert batches and exchange.deployment == "b"
    assert a.streams_closed == a.streams_opened == 1  # the failed attempt's stream was closed


async def test_a_stream_that_fails_midway_does_not_fall_back() -> None:
    a, b = upstreams("a", "b")
    a.script(Stream.text("a b c d", chunks=4, fail_after=2))
    observer = RecordingObserver()
    exchange = chat_exchange(stream=True)
    answer_stream = await build_pipeline([a, b], observer=observer).stream(exchange)
    with pytest.raises(UpstreamConnectionError):
        async for _ in answer_stream:
            pass
    assert b.calls == []
    assert observer.events == [("started", 1), ("first_token", 1), ("failed:connection", 1), ("settled", 1)]


async def test_an_empty_stream_is_an_upstream_failure_and_falls_back() -> None:
    a, b = upstreams("a", "b")

    async def empty(request):  # type: ignore[no-untyped-def]
        return
        yield

    a.stream_chat = empty  # type: ignore[method-assign]
    exchange = chat_exchange(stream=True)
    answer_stream = await build_pipeline([a, b]).stream(exchange)
    assert [batch async for batch in answer_stream]
    assert exchange.deployment == "b"


async def test_cost_comes_from_the_deployment_price_and_usage() -> None:
    (a,) = upstreams("a")
    a.script(Answer.text("ok", usage=Usage(input_tokens=1000, output_tokens=500)))
    exchange = chat_exchange()
    await build_pipeline([a]).chat(exchange)
    assert exchange.usage == Usage(1000, 500)
    assert exchange.cost == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1_000_000)
    assert not exchange.usage_estimated


async def test_a_stream_without_usage_is_estimated_never_free() -> None:
    (a,) = upstreams("a")
    a.script(Stream.text("twelve chars", usage=None))
    exchange = chat_exchange("some prompt text", stream=True)
    answer_stream = await build_pipeline([a]).stream(exchange)
    [_ async for _ in answer_stream]
    assert exchange.usage_estimated
    assert exchange.usage is not None and exchange.usage.output_tokens == len("twelve chars") // 4
    assert exchange.cost is not None and exchange.cost > 0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (UpstreamTimeoutError("slow", provider="p"), "timeout"),
        (UpstreamStatusError("busy", provider="p", upstream_status=429), "rate_limited"),
        (UpstreamStatusError("bad", provider="p", upstream_status=404), "status_4xx"),
        (UpstreamStatusError("down", provider="p", upstream_status=503), "status_5xx"),
        (UpstreamConnectionError("junk", provider="p", code="upstream_malformed"), "malformed"),
        (UpstreamConnectionError("reset", provider="p"), "connection"),
    ],
)
def test_failures_are_classified(error: ProviderError, kind: str) -> None:
    assert classify(error) == kind
