"""The pipeline, socket-free: stage order, refusal, short-circuit answers, and exits exactly once."""

from __future__ import annotations

import asyncio

import pytest

from ferryman.core.canonical import ChatResponse, EmbeddingResponse, Message, TextDelta, TextPart, Usage
from ferryman.core.pipeline import Outcome
from ferryman.errors import InvalidRequestError, RateLimitError, UpstreamConnectionError
from ferryman.testing import Answer, Fail, ScriptedUpstream, Stream
from tests.core.conftest import (
    ProbeStage,
    RecordingObserver,
    build_pipeline,
    chat_exchange,
    embedding_exchange,
)

CACHED = ChatResponse(
    id="cached-1",
    model="m",
    message=Message(role="assistant", parts=(TextPart("from the cache"),)),
    finish_reason="stop",
    usage=Usage(4, 3),
)


def probes(journal: list[str], *names: str) -> list[ProbeStage]:
    return [ProbeStage(name, journal) for name in names]


async def test_stages_enter_in_order_and_exit_in_reverse() -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream()
    pipeline = build_pipeline([upstream], probes(journal, "a", "b", "c"))
    response = await pipeline.chat(chat_exchange("hello"))
    assert response.message.text == "echo: hello"
    assert journal == ["enter:a", "enter:b", "enter:c", "exit:c", "exit:b", "exit:a"]


async def test_a_refusal_stops_the_request_and_only_entered_stages_exit() -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream()
    a, c = ProbeStage("a", journal), ProbeStage("c", journal)
    refusal = RateLimitError("slow down", retry_after=3)
    b = ProbeStage("b", journal, refuse=refusal)
    pipeline = build_pipeline([upstream], [a, b, c])
    with pytest.raises(RateLimitError) as caught:
        await pipeline.chat(chat_exchange())
    assert caught.value is refusal
    assert journal == ["enter:a", "enter:b", "exit:a"]
    assert upstream.calls == []
    assert a.outcomes == [Outcome("failed", error=refusal)]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stage_may_answer_by_itself(stream: bool) -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream()
    a = ProbeStage("a", journal)
    cache = ProbeStage("cache", journal, answer=CACHED)
    later = ProbeStage("later", journal)
    pipeline = build_pipeline([upstream], [a, cache, later])
    exchange = chat_exchange(stream=stream)
    if stream:
        answer_stream = await pipeline.stream(exchange)
        events = [event async for batch in answer_stream for event in batch]
        await answer_stream.aclose()
        assert [e.text for e in events if isinstance(e, TextDelta)] == ["from the cache"]
    else:
        assert await pipeline.chat(exchange) is CACHED
    assert upstream.calls == []
    assert exchange.answered_by == "cache"
    assert journal == ["enter:a", "enter:cache", "exit:cache", "exit:a"]
    assert [o.kind for o in a.outcomes] == ["answered"]


async def test_exit_sees_the_upstream_error_once() -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream()
    upstream.script(Fail.status(400, "bad field"))
    (stage,) = probes(journal, "a")
    pipeline = build_pipeline([upstream], [stage])
    with pytest.raises(Exception, match="bad field"):
        await pipeline.chat(chat_exchange())
    assert journal == ["enter:a", "exit:a"]
    assert stage.outcomes[0].kind == "failed"


async def test_exit_sees_a_whole_answer_with_its_response() -> None:
    journal: list[str] = []
    (stage,) = probes(journal, "a")
    pipeline = build_pipeline([ScriptedUpstream()], [stage])
    response = await pipeline.chat(chat_exchange())
    assert stage.outcomes == [Outcome("answered", response=response)]


async def test_a_completed_stream_exits_once_before_the_iteration_ends() -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream()
    upstream.script(Stream.text("one two three", chunks=3))
    (stage,) = probes(journal, "a")
    pipeline = build_pipeline([upstream], [stage])
    exchange = chat_exchange(stream=True)
    answer_stream = await pipeline.stream(exchange)
    assert journal == ["enter:a"]  # the stream is open: nothing has exited yet
    texts = [e.text async for batch in answer_stream for e in batch if isinstance(e, TextDelta)]
    assert "".join(texts) == "one two three"
    assert journal == ["enter:a", "exit:a"]  # settled before the client sees the end
    await answer_stream.aclose()
    await answer_stream.aclose()
    assert journal == ["enter:a", "exit:a"]
    assert stage.outcomes[0].kind == "answered"
    assert upstream.streams_closed == upstream.streams_opened == 1
    assert exchange.usage is not None and exchange.cost is not None


async def test_a_stream_failing_midway_exits_once_with_the_failure() -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream()
    upstream.script(Stream.text("a b c d", chunks=4, fail_after=2))
    (stage,) = probes(journal, "a")
    pipeline = build_pipeline([upstream], [stage])
    exchange = chat_exchange(stream=True)
    answer_stream = await pipeline.stream(exchange)
    with pytest.raises(UpstreamConnectionError):
        async for _ in answer_stream:
            pass
    await answer_stream.aclose()
    assert journal == ["enter:a", "exit:a"]
    assert stage.outcomes[0].kind == "failed"
    assert isinstance(stage.outcomes[0].error, UpstreamConnectionError)
    assert exchange.usage is not None and exchange.usage_estimated  # cut short: still charged


async def test_a_stream_the_client_abandons_exits_once_as_cancelled() -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream()
    upstream.script(Stream.text("a b c d", chunks=4))
    (stage,) = probes(journal, "a")
    pipeline = build_pipeline([upstream], [stage])
    answer_stream = await pipeline.stream(chat_exchange(stream=True))
    await anext(answer_stream)
    await answer_stream.aclose()
    await answer_stream.aclose()
    assert journal == ["enter:a", "exit:a"]
    assert [o.kind for o in stage.outcomes] == ["cancelled"]
    assert upstream.streams_closed == 1


async def test_a_request_cancelled_while_upstream_thinks_exits_once_as_cancelled() -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream()
    upstream.script(Stream.hang(after=1))
    (stage,) = probes(journal, "a")
    observer = RecordingObserver()
    pipeline = build_pipeline([upstream], [stage], observer=observer)

    async def read_all() -> None:
        answer_stream = await pipeline.stream(chat_exchange(stream=True))
        try:
            async for _ in answer_stream:
                pass
        finally:
            await answer_stream.aclose()

    task = asyncio.create_task(read_all())
    await asyncio.sleep(0.05)  # the stream is open and its upstream is hanging after one batch
    assert upstream.streams_opened == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert journal == ["enter:a", "exit:a"]
    assert [o.kind for o in stage.outcomes] == ["cancelled"]
    assert observer.endings() == [1]  # the attempt ended exactly once


async def test_a_whole_answer_cancelled_mid_call_exits_as_cancelled_and_abandons_the_attempt() -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream()
    upstream.script(Stream.hang(after=0))  # a whole answer that never comes
    (stage,) = probes(journal, "a")
    observer = RecordingObserver()
    pipeline = build_pipeline([upstream], [stage], observer=observer)
    task = asyncio.create_task(pipeline.chat(chat_exchange()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert journal == ["enter:a", "exit:a"]
    assert [o.kind for o in stage.outcomes] == ["cancelled"]
    assert observer.events == [("started", 1), ("abandoned", 1)]


async def test_embeddings_run_through_the_same_stages() -> None:
    journal: list[str] = []
    upstream = ScriptedUpstream("a")
    upstream.script(Answer.embedding(dims=4))
    pipeline = build_pipeline([upstream], probes(journal, "a", "b"))
    response = await pipeline.embed(embedding_exchange())
    assert isinstance(response, EmbeddingResponse)
    assert len(response.vectors[0]) == 4
    assert upstream.calls[0].kind == "embed"
    assert upstream.calls[0].request.model == "a-model"  # each deployment's own upstream model id
    assert journal == ["enter:a", "enter:b", "exit:b", "exit:a"]


async def test_every_stage_exits_even_when_one_exit_fails() -> None:
    journal: list[str] = []

    class BrokenExit(ProbeStage):
        async def exit(self, exchange, outcome):  # type: ignore[no-untyped-def]
            await super().exit(exchange, outcome)
            raise RuntimeError("ledger down")

    stages = [ProbeStage("a", journal), BrokenExit("b", journal), ProbeStage("c", journal)]
    pipeline = build_pipeline([ScriptedUpstream()], stages)
    with pytest.raises(RuntimeError, match="ledger down"):
        await pipeline.chat(chat_exchange())
    assert journal == ["enter:a", "enter:b", "enter:c", "exit:c", "exit:b", "exit:a"]


async def test_a_stage_answering_with_the_wrong_kind_is_a_bug_not_an_answer() -> None:
    wrong = EmbeddingResponse(model="m", vectors=((1.0,),))
    pipeline = build_pipeline([ScriptedUpstream()], [ProbeStage("a", [], answer=wrong)])
    with pytest.raises(TypeError):
        await pipeline.chat(chat_exchange())


def test_finish_names_the_outcome_on_the_exchange() -> None:
    observer = RecordingObserver()
    pipeline = build_pipeline([ScriptedUpstream()], observer=observer)
    refused, answered = chat_exchange(), chat_exchange()
    error = InvalidRequestError("no", param="messages")
    pipeline.finish(refused, error)
    pipeline.finish(answered)
    assert (refused.status, refused.error, refused.http_status) == ("error", "InvalidRequestError", 400)
    assert (answered.status, answered.http_status) == ("success", 200)
    assert refused.finished is not None
    assert observer.finished == [error, None]
