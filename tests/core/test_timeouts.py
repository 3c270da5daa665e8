"""Timeouts: one deadline across every attempt of a request, and a stream's first-token limit."""

from __future__ import annotations

import asyncio
import time

import pytest

from ferryman.core.canonical import ChatRequest, Message, TextPart
from ferryman.core.exchange import Exchange
from ferryman.core.timeouts import (
    DeadlineExceededError,
    FirstTokenTimeoutError,
    ModelTimeout,
    ModelTimeouts,
)
from ferryman.testing import Fail, ScriptedUpstream, Stream
from tests.core.conftest import RecordingObserver
from tests.core.resilience import resilient_pipeline

SLOW = Stream.text("a b c", chunks=3, delay=5.0)  # answered whole, it takes 10 s


def ask(*, stream: bool = False, timeout: float | None = None) -> Exchange:
    request = ChatRequest(
        model="m", messages=(Message(role="user", parts=(TextPart("hi"),)),), stream=stream, timeout=timeout
    )
    exchange = Exchange(request_id="req-timeout")
    exchange.admit(exchange.caller, request)
    return exchange


def test_a_request_may_shorten_the_models_timeout_but_never_lengthen_it() -> None:
    timeouts = ModelTimeouts({"m": ModelTimeout(total=10.0)})
    assert timeouts.budget("m", None) == 10.0
    assert timeouts.budget("m", 2.0) == 2.0
    assert timeouts.budget("m", 60.0) == 10.0
    assert timeouts.budget("other", 3.0) == 3.0  # a model without a limit takes the client's
    assert timeouts.budget("other", None) is None


async def test_the_deadline_ends_a_slow_attempt_with_a_504_and_tries_nothing_more() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.script(SLOW)
    observer = RecordingObserver()
    pipeline = resilient_pipeline({"m": [a, b]}, timeouts={"m": ModelTimeout(total=0.2)}, observer=observer)
    exchange = ask()
    started = time.perf_counter()
    with pytest.raises(DeadlineExceededError) as caught:
        await pipeline.chat(exchange)
    assert time.perf_counter() - started < 2.0
    assert caught.value.status == 504 and caught.value.code == "request_timeout"
    assert caught.value.type == "timeout_error"
    assert b.calls == [] and exchange.attempts == 1
    assert pipeline.attempts.health.status("a").failures == 0  # the client's deadline, not a failure of a


async def test_the_deadline_counts_from_arrival_across_retries() -> None:
    a = ScriptedUpstream("a")
    a.script(Fail.status(503), SLOW)
    pipeline = resilient_pipeline({"m": [a]}, timeouts={"m": ModelTimeout(total=0.3)})
    exchange = ask()
    with pytest.raises(DeadlineExceededError):
        await pipeline.chat(exchange)
    assert exchange.deadline == pytest.approx(exchange.started + 0.3)
    assert len(a.calls) == 2


async def test_the_clients_timeout_applies_without_a_configured_one() -> None:
    a = ScriptedUpstream("a")
    a.script(SLOW)
    with pytest.raises(DeadlineExceededError, match=r"0\.2 s"):
        await resilient_pipeline({"m": [a]}).chat(ask(timeout=0.2))


async def test_a_request_already_past_its_deadline_makes_no_attempt() -> None:
    a = ScriptedUpstream("a")
    exchange = ask(timeout=0.05)
    await asyncio.sleep(0.06)
    with pytest.raises(DeadlineExceededError):
        await resilient_pipeline({"m": [a]}).chat(exchange)
    assert a.calls == []


async def test_a_slow_first_token_moves_to_the_next_deployment() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.script(Stream.hang(after=0))  # headers, then nothing
    b.script(Stream.text("x y", chunks=2))
    observer = RecordingObserver()
    timeouts = {"m": ModelTimeout(first_token=0.1)}
    exchange = ask(stream=True)
    stream = await resilient_pipeline({"m": [a, b]}, timeouts=timeouts, observer=observer).stream(exchange)
    assert [batch async for batch in stream]
    assert exchange.deployment == "b" and a.streams_closed == a.streams_opened == 1
    assert ("failed:timeout", 1) in observer.events


async def test_a_slow_first_token_everywhere_is_a_504() -> None:
    a = ScriptedUpstream("a")
    a.set_default(Stream.hang(after=0))
    timeouts = {"m": ModelTimeout(first_token=0.05)}
    with pytest.raises(FirstTokenTimeoutError) as caught:
        await resilient_pipeline({"m": [a]}, timeouts=timeouts).stream(ask(stream=True))
    assert caught.value.status == 504 and caught.value.code == "first_token_timeout"
    assert a.streams_opened == a.streams_closed == 1  # not retried on the same slow deployment


async def test_the_deadline_covers_a_stream_to_its_end() -> None:
    a = ScriptedUpstream("a")
    a.script(Stream.hang(after=1))
    exchange = ask(stream=True, timeout=0.2)
    stream = await resilient_pipeline({"m": [a]}).stream(exchange)
    received = 0
    with pytest.raises(DeadlineExceededError):
        async for _ in stream:
            received += 1
    assert received == 1 and a.streams_closed == 1
    assert exchange.usage is not None  # a stream cut short still settles
