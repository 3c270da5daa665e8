"""Fallback models: after the requested model's deployments, in order, as the caller may use them."""

from __future__ import annotations

import pytest

from ferryman.core.caller import Caller
from ferryman.core.canonical import ChatRequest, Message, TextPart
from ferryman.core.exchange import Exchange
from ferryman.core.retries import RetryRules
from ferryman.errors import InvalidRequestError, Refusal, UpstreamStatusError
from ferryman.testing import Fail, ScriptedUpstream, Stream
from tests.core.conftest import RecordingObserver
from tests.core.resilience import resilient_pipeline

NO_RETRIES = RetryRules(max_attempts_per_deployment=1)


def ask(
    model: str = "m", *, fallbacks: tuple[str, ...] | None = None, caller: Caller | None = None
) -> Exchange:
    request = ChatRequest(
        model=model, messages=(Message(role="user", parts=(TextPart("hi"),)),), fallbacks=fallbacks
    )
    exchange = Exchange(request_id="req-fallback")
    exchange.admit(caller or exchange.caller, request)
    return exchange


def refusal(reason: Refusal, status: int = 400) -> Fail:
    return Fail.error(
        UpstreamStatusError(
            "scripted refusal",
            provider="scripted",
            upstream_status=status,
            reason=reason,
        )
    )


def upstreams(*labels: str) -> list[ScriptedUpstream]:
    return [ScriptedUpstream(label) for label in labels]


async def test_a_fallback_model_answers_once_every_deployment_of_the_requested_one_failed() -> None:
    a, b, c = upstreams("a", "b", "c")
    a.set_default(Fail.status(503))
    b.set_default(Fail.connection())
    observer = RecordingObserver()
    pipeline = resilient_pipeline({"m": [a, b], "n": [c]}, fallbacks={"m": ["n"]}, observer=observer)
    exchange = ask()
    response = await pipeline.chat(exchange)
    assert len(a.calls) == 2 and len(b.calls) == 2 and len(c.calls) == 1  # each retried once first
    assert observer.afters == [None, "retry", "next", "retry", "fallback"]
    assert exchange.served_model == "n" and exchange.deployment == "c"
    assert exchange.model == "m" and response.model == "m"  # the client's name stays on the answer


@pytest.mark.parametrize("reason", ["context_window_exceeded", "content_policy"])
async def test_a_refusal_another_model_may_not_repeat_skips_to_the_fallback_model(reason: Refusal) -> None:
    a, b, c = upstreams("a", "b", "c")
    a.script(refusal(reason))
    exchange = ask()
    await resilient_pipeline({"m": [a, b], "n": [c]}, fallbacks={"m": ["n"]}).chat(exchange)
    assert len(a.calls) == 1 and b.calls == [] and len(c.calls) == 1
    assert exchange.served_model == "n"


async def test_a_refusal_with_no_fallback_reaches_the_client_with_openais_code() -> None:
    (a,) = upstreams("a")
    a.script(refusal("context_window_exceeded"))
    with pytest.raises(UpstreamStatusError) as caught:
        await resilient_pipeline({"m": [a]}).chat(ask())
    assert caught.value.status == 400 and caught.value.code == "context_length_exceeded"


async def test_a_plain_client_error_does_not_fall_back() -> None:
    a, c = upstreams("a", "c")
    a.script(Fail.status(400, "unknown parameter"))
    with pytest.raises(UpstreamStatusError):
        await resilient_pipeline({"m": [a], "n": [c]}, fallbacks={"m": ["n"]}).chat(ask())
    assert c.calls == []


async def test_fallback_models_are_tried_in_order_and_the_last_error_is_raised() -> None:
    a, c, d = upstreams("a", "c", "d")
    a.set_default(Fail.status(500))
    c.set_default(Fail.status(502))
    d.set_default(Fail.status(504, "last"))
    pipeline = resilient_pipeline(
        {"m": [a], "n": [c], "o": [d]}, rules=NO_RETRIES, fallbacks={"m": ["n", "o"]}
    )
    exchange = ask()
    with pytest.raises(UpstreamStatusError, match="last"):
        await pipeline.chat(exchange)
    assert [len(u.calls) for u in (a, c, d)] == [1, 1, 1]
    assert exchange.attempts == 3


async def test_a_requests_own_fallbacks_replace_the_configured_ones() -> None:
    a, c, d = upstreams("a", "c", "d")
    a.set_default(Fail.status(500))
    pipeline = resilient_pipeline({"m": [a], "n": [c], "o": [d]}, rules=NO_RETRIES, fallbacks={"m": ["n"]})
    exchange = ask(fallbacks=("o",))
    await pipeline.chat(exchange)
    assert c.calls == [] and len(d.calls) == 1 and exchange.served_model == "o"


async def test_an_empty_request_list_turns_the_configured_fallbacks_off() -> None:
    a, c = upstreams("a", "c")
    a.set_default(Fail.status(500))
    pipeline = resilient_pipeline({"m": [a], "n": [c]}, rules=NO_RETRIES, fallbacks={"m": ["n"]})
    with pytest.raises(UpstreamStatusError):
        await pipeline.chat(ask(fallbacks=()))
    assert c.calls == []


async def test_a_request_naming_an_unknown_fallback_is_a_400_before_any_attempt() -> None:
    (a,) = upstreams("a")
    with pytest.raises(InvalidRequestError) as caught:
        await resilient_pipeline({"m": [a]}).chat(ask(fallbacks=("nope",)))
    assert caught.value.status == 400 and caught.value.param == "fallbacks"
    assert a.calls == []


async def test_a_fallback_the_callers_key_may_not_use_is_skipped() -> None:
    a, c, d = upstreams("a", "c", "d")
    a.set_default(Fail.status(500))
    caller = Caller(key_alias="k1", key_models=("m", "o"))
    pipeline = resilient_pipeline(
        {"m": [a], "n": [c], "o": [d]}, rules=NO_RETRIES, fallbacks={"m": ["n", "o"]}
    )
    exchange = ask(caller=caller)
    await pipeline.chat(exchange)
    assert c.calls == [] and len(d.calls) == 1 and exchange.served_model == "o"


async def test_the_requested_model_and_repeats_are_not_tried_twice() -> None:
    a, c = upstreams("a", "c")
    a.set_default(Fail.status(500))
    c.set_default(Fail.status(500))
    pipeline = resilient_pipeline({"m": [a], "n": [c]}, rules=NO_RETRIES)
    with pytest.raises(UpstreamStatusError):
        await pipeline.chat(ask(fallbacks=("m", "n", "n")))
    assert len(a.calls) == 1 and len(c.calls) == 1


async def test_a_stream_falls_back_to_another_model_before_its_first_batch() -> None:
    a, c = upstreams("a", "c")
    a.set_default(Fail.status(503))
    c.script(Stream.text("x y", chunks=2))
    request = ChatRequest(model="m", messages=(Message(role="user", parts=(TextPart("hi"),)),), stream=True)
    exchange = Exchange(request_id="req-stream")
    exchange.admit(exchange.caller, request)
    stream = await resilient_pipeline({"m": [a], "n": [c]}, fallbacks={"m": ["n"]}).stream(exchange)
    assert [batch async for batch in stream]
    assert exchange.served_model == "n" and a.streams_closed == a.streams_opened == 2
