"""ScriptedUpstream: every step kind, on every kind of call, with no socket."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import subprocess
import sys
import textwrap

import pytest

from ferryman.core.canonical import (
    ChatRequest,
    EmbeddingRequest,
    Finish,
    Message,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from ferryman.core.upstream import StreamBatch, Upstream
from ferryman.errors import (
    ProviderError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ferryman.testing import Answer, Fail, ScriptedCall, ScriptedUpstream, Stream
from ferryman.testing import Usage as FakeUsage


def chat_request(text: str = "hello there", *, system: str | None = None) -> ChatRequest:
    messages = [Message(role="user", parts=(TextPart(text),))]
    if system is not None:
        messages.insert(0, Message(role="system", parts=(TextPart(system),)))
    return ChatRequest(model="m-1", messages=tuple(messages))


def embedding_request(*inputs: str, dimensions: int | None = None) -> EmbeddingRequest:
    return EmbeddingRequest(model="e-1", inputs=inputs, dimensions=dimensions)


async def read_all(up: ScriptedUpstream, request: ChatRequest | None = None) -> list[StreamBatch]:
    return [batch async for batch in up.stream_chat(request or chat_request())]


def events(batches: list[StreamBatch]) -> list[object]:
    return [event for batch in batches for event in batch]


def test_it_satisfies_the_upstream_protocol_with_a_separate_label() -> None:
    upstream: Upstream = ScriptedUpstream(name="a")  # mypy checks the structure

    assert isinstance(upstream, ScriptedUpstream)
    assert upstream.label == "a"
    assert ScriptedUpstream.name == "scripted"
    assert inspect.isasyncgenfunction(ScriptedUpstream.stream_chat)


async def test_the_default_echoes_the_last_user_text_and_counts_words() -> None:
    up = ScriptedUpstream()

    request = chat_request("hello there", system="be brief")
    reply = Message(role="assistant", parts=(TextPart("earlier"),))
    response = await up.chat(dataclasses.replace(request, messages=(*request.messages, reply)))

    assert response.message == Message(role="assistant", parts=(TextPart("echo: hello there"),))
    assert (response.model, response.finish_reason) == ("m-1", "stop")
    assert response.usage == Usage(input_tokens=5, output_tokens=3)


async def test_answer_text_reports_the_scripted_usage_of_either_usage_type() -> None:
    up = ScriptedUpstream()
    up.script(Answer.text("hi", usage=Usage(3, 2)), Answer.text("ho", usage=FakeUsage(5, 1, cached_tokens=4)))

    first, second = await up.chat(chat_request()), await up.chat(chat_request())

    assert (first.message.text, first.usage) == ("hi", Usage(3, 2))
    assert (second.message.text, second.usage) == ("ho", Usage(5, 1, cached_tokens=4))


@pytest.mark.parametrize(
    ("step", "error_type"),
    [
        (Fail.status(503, retry_after=1.0), UpstreamStatusError),
        (Fail.timeout(), UpstreamTimeoutError),
        (Fail.connection(), UpstreamConnectionError),
    ],
)
@pytest.mark.parametrize("kind", ["chat", "stream", "embed"])
async def test_fail_raises_its_provider_error_on_every_kind_of_call(
    step: Fail, error_type: type[ProviderError], kind: str
) -> None:
    up = ScriptedUpstream()
    up.script(step)

    with pytest.raises(error_type) as caught:
        if kind == "chat":
            await up.chat(chat_request())
        elif kind == "stream":
            await read_all(up)
        else:
            await up.embed(embedding_request("x"))

    assert caught.value.provider == "scripted"
    assert up.pending == 0


async def test_fail_status_carries_the_status_and_retry_after() -> None:
    up = ScriptedUpstream()
    up.script(Fail.status(503, retry_after=1.0), Fail.status(404, "no such model"))

    with pytest.raises(UpstreamStatusError) as unavailable:
        await up.chat(chat_request())
    with pytest.raises(UpstreamStatusError) as missing:
        await up.chat(chat_request())

    assert (unavailable.value.upstream_status, unavailable.value.retry_after) == (503, 1.0)
    assert unavailable.value.retryable and unavailable.value.status == 502
    assert (missing.value.message, missing.value.status, missing.value.retryable) == (
        "no such model",
        404,
        False,
    )


async def test_fail_error_raises_exactly_the_given_error() -> None:
    error = UpstreamStatusError("quota", provider="openai", upstream_status=429, retry_after=7.0)
    up = ScriptedUpstream()
    up.script(Fail.error(error))

    with pytest.raises(UpstreamStatusError) as caught:
        await up.chat(chat_request())

    assert caught.value is error


async def test_a_failing_stream_raises_on_the_first_read_not_on_the_call() -> None:
    up = ScriptedUpstream()
    up.script(Fail.timeout())

    stream = up.stream_chat(chat_request())
    assert (up.calls, up.pending) == ([], 1)

    with pytest.raises(UpstreamTimeoutError):
        await anext(stream)
    assert (up.streams_opened, up.streams_closed) == (1, 1)


async def test_stream_text_yields_start_deltas_finish_and_usage_one_event_per_batch() -> None:
    up = ScriptedUpstream()
    up.script(Stream.text("a b c", chunks=3, usage=Usage(3, 3)))

    batches = await read_all(up)

    assert batches == [
        [StreamStart("scripted-1", "m-1")],
        [TextDelta("a")],
        [TextDelta(" b")],
        [TextDelta(" c")],
        [Finish("stop")],
        [UsageReport(Usage(3, 3))],
    ]


async def test_stream_batch_groups_events() -> None:
    up = ScriptedUpstream()
    up.script(Stream.text("a b c", chunks=3, batch=4))

    batches = await read_all(up)

    assert [len(batch) for batch in batches] == [4, 2]
    assert events(batches)[4:] == [Finish("stop"), UsageReport(Usage(input_tokens=2, output_tokens=3))]


async def test_a_stream_with_no_usage_reports_none() -> None:
    up = ScriptedUpstream()
    up.script(Stream.text("x", usage=None))

    assert events(await read_all(up)) == [StreamStart("scripted-1", "m-1"), TextDelta("x"), Finish("stop")]


async def test_a_stream_fails_after_n_batches_with_the_scripted_error() -> None:
    error = UpstreamConnectionError("reset", provider="anthropic")
    up = ScriptedUpstream()
    up.script(Stream.text("a b c", chunks=3, fail_after=2, error=error))
    received: list[StreamBatch] = []

    with pytest.raises(UpstreamConnectionError) as caught:
        async for batch in up.stream_chat(chat_request()):
            received.append(batch)

    assert caught.value is error
    assert received == [[StreamStart("scripted-1", "m-1")], [TextDelta("a")]]
    assert (up.streams_opened, up.streams_closed) == (1, 1)


async def test_a_stream_fails_with_a_dropped_connection_by_default_and_at_the_end_when_short() -> None:
    up = ScriptedUpstream()
    up.script(Stream.text("a", fail_after=0), Stream.text("a", fail_after=99))
    stream = up.stream_chat(chat_request())

    with pytest.raises(UpstreamConnectionError, match="after 0 batches"):
        await anext(stream)
    received: list[StreamBatch] = []
    with pytest.raises(UpstreamConnectionError, match="after 4 batches"):
        async for batch in up.stream_chat(chat_request()):
            received.append(batch)
    assert len(received) == 4


async def test_streams_closed_counts_streams_closed_early_and_ignores_unread_ones() -> None:
    up = ScriptedUpstream()
    up.script(Stream.text("a b c", chunks=3), Answer.text("never read"))

    early = up.stream_chat(chat_request())
    await anext(early)
    assert (up.streams_opened, up.streams_closed) == (1, 0)
    await early.aclose()
    assert up.streams_closed == 1

    unread = up.stream_chat(chat_request())
    await unread.aclose()
    assert (up.streams_opened, up.streams_closed, up.pending, len(up.calls)) == (1, 1, 1, 1)


async def test_an_answer_asked_for_as_a_stream_is_streamed_as_its_events() -> None:
    up = ScriptedUpstream()
    up.script(Answer.text("hi there", usage=Usage(1, 2)))

    assert events(await read_all(up)) == [
        StreamStart("scripted-1", "m-1"),
        TextDelta("hi there"),
        Finish("stop"),
        UsageReport(Usage(1, 2)),
    ]


async def test_a_stream_asked_for_whole_is_collapsed_into_its_answer() -> None:
    up = ScriptedUpstream()
    up.script(Stream.text("a b c", chunks=3, finish="length", usage=Usage(9, 3)))

    response = await up.chat(chat_request())

    assert (response.message.text, response.finish_reason, response.usage) == ("a b c", "length", Usage(9, 3))
    assert response.id == "scripted-1"


async def test_a_failing_stream_asked_for_whole_fails() -> None:
    error = UpstreamTimeoutError("read timeout", provider="gemini")
    up = ScriptedUpstream()
    up.script(Stream.text("a b c", chunks=3, fail_after=2, error=error))

    with pytest.raises(UpstreamTimeoutError) as caught:
        await up.chat(chat_request())

    assert caught.value is error


async def test_a_tool_call_answers_whole_and_streams_its_arguments_in_chunks() -> None:
    up = ScriptedUpstream()
    up.script(Answer.tool_call("get_weather", {"city": "Paris"}))
    up.script(Stream(Answer.tool_call("get_weather", {"city": "Paris"}, id="call_1"), chunks=3))

    response = await up.chat(chat_request())
    streamed = events(await read_all(up))

    assert response.message.tool_calls == (ToolCall("call_scripted_0", "get_weather", '{"city":"Paris"}'),)
    assert (response.finish_reason, response.usage.output_tokens) == ("tool_calls", 2)
    assert streamed[1] == ToolCallStart(0, "call_1", "get_weather")
    fragments = [event for event in streamed if isinstance(event, ToolCallDelta)]
    assert len(fragments) == 3
    assert "".join(fragment.arguments for fragment in fragments) == '{"city":"Paris"}'
    assert Finish("tool_calls") in streamed


async def test_embeddings_are_per_input_deterministic_and_sized() -> None:
    up = ScriptedUpstream()
    up.script(Answer.embedding(dims=4), Answer.embedding(usage=Usage(7, 0)))

    four = await up.embed(embedding_request("a b", "c", "a b"))
    by_request = await up.embed(embedding_request("a b", dimensions=16))
    echoed = await up.embed(embedding_request("a b"))

    assert [len(vector) for vector in four.vectors] == [4, 4, 4]
    assert four.vectors[0] == four.vectors[2] != four.vectors[1]
    assert (four.model, four.usage) == ("e-1", Usage(input_tokens=5))
    assert (len(by_request.vectors[0]), by_request.usage) == (16, Usage(7, 0))
    assert len(echoed.vectors[0]) == 8


async def test_steps_that_cannot_fit_the_call_are_script_bugs() -> None:
    up = ScriptedUpstream()
    up.script(Answer.embedding(), Answer.text("hi"), Stream.text("hi"))

    with pytest.raises(TypeError, match="embedding step"):
        await up.chat(chat_request())
    with pytest.raises(TypeError, match="chat step"):
        await up.embed(embedding_request("x"))
    with pytest.raises(TypeError, match="chat step"):
        await up.embed(embedding_request("x"))


async def test_times_repeats_the_whole_sequence_and_pending_counts_down() -> None:
    up = ScriptedUpstream()
    up.script(Fail.status(503), Answer.text("ok"), times=2)
    outcomes: list[str] = []

    for _ in range(5):
        try:
            outcomes.append((await up.chat(chat_request("hi"))).message.text)
        except UpstreamStatusError:
            outcomes.append("503")
        outcomes.append(f"pending={up.pending}")

    assert outcomes == [
        *("503", "pending=3", "ok", "pending=2"),
        *("503", "pending=1", "ok", "pending=0"),
        *("echo: hi", "pending=0"),
    ]


async def test_set_default_answers_when_the_script_is_empty_and_none_restores_the_echo() -> None:
    up = ScriptedUpstream()
    up.set_default(Fail.connection())
    up.script(Answer.text("scripted"))

    assert (await up.chat(chat_request())).message.text == "scripted"
    for _ in range(2):
        with pytest.raises(UpstreamConnectionError):
            await up.chat(chat_request())
    up.set_default(None)
    assert (await up.chat(chat_request("back"))).message.text == "echo: back"


async def test_calls_record_kind_and_request_in_order() -> None:
    up = ScriptedUpstream()
    chat, streamed, embedded = chat_request("one"), chat_request("two"), embedding_request("three")

    await up.chat(chat)
    await read_all(up, streamed)
    await up.embed(embedded)

    assert up.calls == [
        ScriptedCall("chat", chat),
        ScriptedCall("stream", streamed),
        ScriptedCall("embed", embedded),
    ]
    assert up.calls[1].request is streamed


async def test_delay_spaces_batches_and_a_cancelled_read_closes_the_stream() -> None:
    up = ScriptedUpstream()
    up.script(Stream.text("a b", chunks=2, delay=0.02), Stream.text("a b", chunks=2, delay=60))
    loop = asyncio.get_running_loop()

    started = loop.time()
    batches = await read_all(up)
    assert loop.time() - started >= 0.02 * (len(batches) - 1)

    slow = up.stream_chat(chat_request())
    await asyncio.wait_for(anext(slow), 1)  # the first batch is never delayed
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(slow), 0.05)
    assert (up.streams_opened, up.streams_closed) == (2, 2)


async def test_hang_yields_the_first_batch_then_waits_until_cancelled() -> None:
    up = ScriptedUpstream()
    up.script(Stream.hang(), Stream.hang())

    stream = up.stream_chat(chat_request())
    assert await anext(stream) == [StreamStart("scripted-1", "m-1")]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(up.chat(chat_request()), 0.05)
    assert up.streams_closed == 1


async def test_a_delayed_stream_asked_for_whole_takes_as_long_as_streaming_it() -> None:
    up = ScriptedUpstream()
    up.script(Stream.text("a b", chunks=2, delay=0.02))  # five batches, four gaps
    loop = asyncio.get_running_loop()

    started = loop.time()
    response = await up.chat(chat_request())

    assert loop.time() - started >= 0.08
    assert response.message.text == "a b"


def test_a_stream_cannot_both_fail_and_hang_and_steps_are_frozen() -> None:
    with pytest.raises(ValueError, match="fails or hangs"):
        Stream(fail_after=1, hang_after=1)
    with pytest.raises(ValueError, match="chunks"):
        Stream.text("x", chunks=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Answer.text("x").finish = "length"  # type: ignore[misc]


async def test_aclose_marks_it_closed() -> None:
    up = ScriptedUpstream()
    assert not up.closed

    await up.aclose()

    assert up.closed


def test_importing_ferryman_testing_opens_no_socket_and_starts_no_thread() -> None:
    probe = textwrap.dedent(
        """
        import socket, threading

        class NoSocket(socket.socket):
            def __init__(self, *args, **kwargs):
                raise SystemExit("a socket was opened on import")

        def no_thread(self):
            raise SystemExit("a thread was started on import")

        socket.socket = NoSocket
        threading.Thread.start = no_thread
        import ferryman.testing
        assert threading.active_count() == 1, threading.enumerate()
        print(ferryman.testing.ScriptedUpstream.name)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )

    assert (result.returncode, result.stdout.strip()) == (0, "scripted"), result.stderr
