"""The response cache stage, socket-free: what is a hit, what is stored, what a hit costs, and the key."""

from __future__ import annotations

import dataclasses

import pytest

from ferryman.core.attempts import AttemptLoop
from ferryman.core.cache_key import cache_key
from ferryman.core.caller import Caller
from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    Message,
    ResponseFormat,
    TextPart,
    Tool,
    ToolChoice,
    Usage,
)
from ferryman.core.exchange import Exchange
from ferryman.core.ledger import SpendLedger
from ferryman.core.pipeline import Pipeline, Stage
from ferryman.core.response_cache import (
    CachePolicy,
    ResponseCache,
    cache_directives,
    decode_entry,
    encode_entry,
)
from ferryman.core.routing import Router
from ferryman.errors import SharedStateUnavailableError
from ferryman.store.memory import MemoryCache, MemoryLedger
from ferryman.testing import Answer, ScriptedUpstream, Stream
from tests.core.conftest import RecordingObserver, target

ALICE = Caller(key_alias="alice", key_id="k-alice", team_id="t1")
BOB = Caller(key_alias="bob", key_id="k-bob", team_id="t1")
CAROL = Caller(key_alias="carol", key_id="k-carol", team_id="t2")
POLICY = CachePolicy(ttl=60.0)


def request(text: str = "hi", **fields: object) -> ChatRequest:
    base = ChatRequest(model="m", messages=(Message("user", (TextPart(text),)),), temperature=0.0)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def exchange_for(
    chat: ChatRequest, caller: Caller = ALICE, *, cache_control: str = "", spend_id: str = "s"
) -> Exchange:
    exchange = Exchange(request_id="r", spend_id=spend_id)
    exchange.admit(caller, chat)
    exchange.cache_control = cache_control
    return exchange


class Rig:
    """A pipeline of cache then ledger over one scripted upstream, as the app orders them."""

    def __init__(self, *, scope: str = "key", policy: CachePolicy = POLICY, store: object = None) -> None:
        self.upstream = ScriptedUpstream("a")
        self.upstream.set_default(Answer.text("cached words", usage=Usage(3, 2)))
        self.store = store if store is not None else MemoryCache()
        self.ledger = MemoryLedger()
        stage = ResponseCache(self.store, {"m": policy}, scope=scope, ledger=self.ledger)  # type: ignore[arg-type]
        stages: list[Stage] = [stage, SpendLedger(self.ledger)]
        observer = RecordingObserver()
        self.pipeline = Pipeline(
            stages, AttemptLoop(Router({"m": [target(self.upstream)]}), observer), observer
        )

    async def chat(self, exchange: Exchange) -> ChatResponse:
        return await self.pipeline.chat(exchange)

    async def stream_text(self, exchange: Exchange) -> str:
        text = []
        stream = await self.pipeline.stream(exchange)
        try:
            async for batch in stream:
                text += [getattr(event, "text", "") for event in batch]
        finally:
            await stream.aclose()
        return "".join(text)


async def test_a_repeat_is_a_hit_that_skips_the_upstream() -> None:
    rig = Rig()
    first, second = exchange_for(request()), exchange_for(request(), spend_id="s2")
    answer = await rig.chat(first)
    again = await rig.chat(second)
    assert len(rig.upstream.calls) == 1
    assert (first.headers["x-ferryman-cache"], second.headers["x-ferryman-cache"]) == ("miss", "hit")
    assert again.message.text == answer.message.text == "cached words"
    assert again.usage == Usage(3, 2)  # the client sees the stored usage…
    assert second.cost == 0.0 and second.usage is None  # …but nothing was spent
    assert second.answered_by == "response_cache" and second.deployment == "cache"


async def test_a_hit_is_recorded_in_the_ledger_at_zero_dollars() -> None:
    rig = Rig()
    await rig.chat(exchange_for(request(), spend_id="miss-1"))
    await rig.chat(exchange_for(request(), spend_id="hit-1"))
    entries = {entry.request_id: entry for entry in await rig.ledger.entries()}
    assert set(entries) == {"miss-1", "hit-1"}
    hit = entries["hit-1"]
    assert (hit.provider, hit.deployment, hit.cost_usd) == ("cache", "cache", 0.0)
    assert (hit.input_tokens, hit.output_tokens, hit.key_id) == (3, 2, "k-alice")
    assert entries["miss-1"].cost_usd is not None and entries["miss-1"].cost_usd > 0


async def test_the_stream_flag_is_not_part_of_the_key() -> None:
    rig = Rig()
    text = await rig.stream_text(exchange_for(request(stream=True)))  # stored assembled from the stream
    whole = exchange_for(request())
    answer = await rig.chat(whole)
    streamed_hit = exchange_for(request(stream=True))
    replayed = await rig.stream_text(streamed_hit)
    assert len(rig.upstream.calls) == 1
    assert text == answer.message.text == replayed == "cached words"
    assert whole.cache_result == streamed_hit.cache_result == "hit"


async def test_a_stream_is_stored_only_when_it_ended_complete() -> None:
    rig = Rig()
    rig.upstream.script(Stream.text("a b c", chunks=3, usage=None))  # no usage: estimated
    await rig.stream_text(exchange_for(request(stream=True)))
    await rig.chat(exchange_for(request()))
    assert len(rig.upstream.calls) == 2


async def test_no_cache_skips_the_lookup_but_stores_and_no_store_does_neither() -> None:
    rig = Rig()
    rig.upstream.script(Answer.text("first", usage=Usage(1, 1)), Answer.text("fresh", usage=Usage(1, 1)))
    await rig.chat(exchange_for(request(), cache_control="no-store"))  # not stored
    refreshed = exchange_for(request(), cache_control="No-Cache")
    assert (await rig.chat(refreshed)).message.text == "fresh"  # not read: the upstream answered
    assert refreshed.headers["x-ferryman-cache"] == "bypass"
    hit = exchange_for(request())
    assert (await rig.chat(hit)).message.text == "fresh"  # what no-cache stored
    skipped = exchange_for(request(), cache_control="max-age=0, no-store")
    await rig.chat(skipped)
    assert skipped.cache_result == "bypass"
    assert [hit.cache_result, len(rig.upstream.calls)] == ["hit", 3]


async def test_sampled_requests_are_not_cached_unless_the_policy_says_so() -> None:
    rig = Rig()
    for temperature in (0.7, 0.7, None, None):
        exchange = exchange_for(request(temperature=temperature))
        await rig.chat(exchange)
        assert exchange.headers["x-ferryman-cache"] == "bypass"
    assert len(rig.upstream.calls) == 4
    sampled = Rig(policy=CachePolicy(ttl=60.0, nonzero_temperature=True))
    for _ in range(2):
        await sampled.chat(exchange_for(request(temperature=0.7)))
    assert len(sampled.upstream.calls) == 1


@pytest.mark.parametrize(
    ("scope", "shared_with"), [("key", set()), ("team", {"bob"}), ("global", {"bob", "carol"})]
)
async def test_the_scope_says_who_shares_an_entry(scope: str, shared_with: set[str]) -> None:
    rig = Rig(scope=scope)
    await rig.chat(exchange_for(request(), ALICE))
    hits = set()
    for caller in (BOB, CAROL):
        exchange = exchange_for(request(), caller)
        await rig.chat(exchange)
        if exchange.cache_result == "hit":
            hits.add(caller.key_alias)
    assert hits == shared_with


async def test_a_key_without_a_team_keeps_its_entries_under_team_scope() -> None:
    rig = Rig(scope="team")
    loner, other = Caller("loner", key_id="k1"), Caller("other", key_id="k2")
    await rig.chat(exchange_for(request(), loner))
    exchange = exchange_for(request(), other)
    await rig.chat(exchange)
    assert exchange.cache_result == "miss"


async def test_entries_expire_after_the_ttl() -> None:
    now = [0.0]
    rig = Rig(store=MemoryCache(clock=lambda: now[0]), policy=CachePolicy(ttl=10.0))
    await rig.chat(exchange_for(request()))
    now[0] = 9.0
    assert (fresh := exchange_for(request())) and (await rig.chat(fresh)) and fresh.cache_result == "hit"
    now[0] = 10.5
    expired = exchange_for(request())
    await rig.chat(expired)
    assert expired.cache_result == "miss" and len(rig.upstream.calls) == 2


async def test_an_unreachable_cache_makes_misses_never_failures() -> None:
    class Down(MemoryCache):
        async def get(self, key: str) -> bytes | None:
            raise SharedStateUnavailableError("redis down")

        async def set(self, key: str, value: bytes, ttl: float) -> None:
            raise SharedStateUnavailableError("redis down")

    rig = Rig(store=Down())
    for _ in range(2):
        exchange = exchange_for(request())
        assert (await rig.chat(exchange)).message.text == "cached words"
        assert exchange.cache_result == "miss"


async def test_a_model_without_a_policy_and_embeddings_are_left_alone() -> None:
    stage = ResponseCache(MemoryCache(), {"m": POLICY})
    other = exchange_for(request(model="other"))
    vectors = Exchange(request_id="e")
    vectors.admit(ALICE, EmbeddingRequest(model="m", inputs=("a",)))
    for exchange in (other, vectors):
        assert await stage.enter(exchange) is None
        assert exchange.cache_result == "" and "x-ferryman-cache" not in exchange.headers
        assert not exchange.assemble_stream


def test_the_key_covers_what_shapes_the_answer_and_nothing_else() -> None:
    base = cache_key("key:k", request())
    same = [
        request(stream=True),
        request(user="someone-else"),
        request(fallbacks=("x",), timeout=3.0),
        request(temperature=0),  # an int temperature is the same number
    ]
    assert {cache_key("key:k", chat) for chat in same} == {base}
    different = [
        request("bye"),
        request(model="m2"),
        request(max_tokens=5),
        request(temperature=0.5),
        request(top_p=0.9),
        request(stop=("x",)),
        request(seed=1),
        request(tools=(Tool("f"),)),
        request(tool_choice=ToolChoice("required")),
        request(parallel_tool_calls=False),
        request(response_format=ResponseFormat("json_object")),
    ]
    keys = {cache_key("key:k", chat) for chat in different}
    assert len(keys) == len(different) and base not in keys
    assert cache_key("key:other", request()) != base


def test_schemas_in_another_key_order_share_a_key() -> None:
    one = request(tools=(Tool("f", parameters={"type": "object", "properties": {}}),))
    two = request(tools=(Tool("f", parameters={"properties": {}, "type": "object"}),))
    assert cache_key("global", one) == cache_key("global", two)


def test_entries_round_trip_and_unreadable_ones_are_misses() -> None:
    response = ChatResponse(
        "id-1", "m", Message("assistant", (TextPart("t"),)), "stop", Usage(1, 2, 0, 0, 1), 7
    )
    assert decode_entry(encode_entry(response, "served")) == (response, "served")
    assert decode_entry(b"not json") is None
    assert decode_entry(b"[2]") is None


def test_cache_control_directives_are_read_case_insensitively() -> None:
    assert cache_directives("No-Cache, max-age=0") == {"no-cache", "max-age"}
    assert cache_directives("") == frozenset()


async def test_a_streamed_tool_call_is_assembled_and_served_whole() -> None:
    rig = Rig()
    rig.upstream.script(
        Stream(Answer.tool_call("get_weather", {"city": "Paris"}, usage=Usage(5, 4)), chunks=3)
    )
    await rig.stream_text(exchange_for(request(stream=True)))
    hit = exchange_for(request())
    answer = await rig.chat(hit)
    assert hit.cache_result == "hit" and len(rig.upstream.calls) == 1
    (call,) = answer.message.tool_calls
    assert (call.id, call.name, call.arguments) == ("call_scripted_0", "get_weather", '{"city":"Paris"}')
    assert (answer.finish_reason, answer.usage) == ("tool_calls", Usage(5, 4))
