"""The ledger stage, socket-free: one entry per request that reached an upstream, keyed uniquely."""

from __future__ import annotations

import pytest

from ferryman.core.attempts import AttemptLoop
from ferryman.core.caller import Caller
from ferryman.core.canonical import ChatRequest, Message, TextPart, Usage
from ferryman.core.exchange import Exchange
from ferryman.core.ledger import FallbackLedger, SpendLedger
from ferryman.core.pipeline import Pipeline
from ferryman.core.routing import Router
from ferryman.core.shared_state import Ledger
from ferryman.errors import SharedStateUnavailableError, UpstreamConnectionError
from ferryman.store.memory import MemoryLedger
from ferryman.testing import Answer, Fail, ScriptedUpstream, Stream
from tests.core.conftest import RecordingObserver, target

CALLER = Caller(key_alias="app", key_id="k1", team_id="t1", end_user="alice")


def exchange_for(spend_id: str, *, stream: bool = False) -> Exchange:
    exchange = Exchange(request_id="client-chosen-id", spend_id=spend_id)
    messages = (Message(role="user", parts=(TextPart("hi"),)),)
    exchange.admit(CALLER, ChatRequest(model="m", messages=messages, stream=stream))
    return exchange


def pipeline_with(upstream: ScriptedUpstream, ledger: Ledger) -> Pipeline:
    observer = RecordingObserver()
    return Pipeline([SpendLedger(ledger)], AttemptLoop(Router({"m": [target(upstream)]}), observer), observer)


async def test_each_answered_request_leaves_one_entry_even_with_a_reused_request_id() -> None:
    upstream, ledger = ScriptedUpstream("a"), MemoryLedger()
    upstream.script(Answer.text("x", usage=Usage(3, 4)), Answer.text("y", usage=Usage(5, 6)))
    pipeline = pipeline_with(upstream, ledger)
    await pipeline.chat(exchange_for("client-chosen-id#1"))
    await pipeline.chat(exchange_for("client-chosen-id#2"))
    entries = await ledger.entries()
    assert [(e.request_id, e.input_tokens, e.output_tokens) for e in entries] == [
        ("client-chosen-id#1", 3, 4),
        ("client-chosen-id#2", 5, 6),
    ]
    first = entries[0]
    assert (first.key_id, first.team_id, first.end_user, first.deployment) == ("k1", "t1", "alice", "a")
    assert first.cost_usd == pytest.approx((3 * 1.0 + 4 * 2.0) / 1e6)


async def test_a_stream_cut_short_is_recorded_as_estimated() -> None:
    upstream, ledger = ScriptedUpstream("a"), MemoryLedger()
    upstream.script(Stream.text("a b c d", chunks=4, fail_after=2, usage=None))
    stream = await pipeline_with(upstream, ledger).stream(exchange_for("s1", stream=True))
    with pytest.raises(UpstreamConnectionError):
        async for _ in stream:
            pass
    (entry,) = await ledger.entries()
    assert entry.estimated and entry.output_tokens >= 0 and entry.cost_usd is not None


async def test_a_request_no_upstream_answered_leaves_nothing() -> None:
    upstream, ledger = ScriptedUpstream("a"), MemoryLedger()
    upstream.script(Fail.connection())
    with pytest.raises(UpstreamConnectionError):
        await pipeline_with(upstream, ledger).chat(exchange_for("f1"))
    assert await ledger.entries() == []


async def test_spend_goes_to_the_durable_ledger_while_the_fast_one_is_unreachable() -> None:
    class Unreachable(MemoryLedger):
        async def append(self, entry):  # type: ignore[no-untyped-def]
            raise SharedStateUnavailableError("redis down")

    durable = MemoryLedger()
    upstream = ScriptedUpstream("a")
    upstream.script(Answer.text("x", usage=Usage(3, 4)))
    await pipeline_with(upstream, FallbackLedger(Unreachable(), durable)).chat(exchange_for("fb1"))  # type: ignore[arg-type]
    assert [e.request_id for e in await durable.entries()] == ["fb1"]
