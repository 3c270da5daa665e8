"""The OpenAI codec: golden wire examples, streams, round-trip properties, bad input and SDK acceptance."""

from __future__ import annotations

import array
import base64
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    ImagePart,
    JSONObject,
    Message,
    ResponseFormat,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    Usage,
    UsageReport,
)
from ferryman.errors import InvalidRequestError, UpstreamConnectionError
from ferryman.wire import openai as wire

GOLDEN = Path(__file__).parent / "golden" / "openai"


def load(name: str) -> Any:
    return orjson.loads((GOLDEN / name).read_bytes())


def sse_payloads(raw: bytes) -> list[Any]:
    """Split SSE bytes into decoded `data:` payloads, as the transport does, dropping `[DONE]`."""
    frames = raw.split(b"\n\n")
    assert frames[-1] == b"", "every frame must end with a blank line"
    payloads = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: "), frame
        data = frame[len(b"data: ") :]
        if data != b"[DONE]":
            payloads.append(orjson.loads(data))
    return payloads


def parse_stream(payloads: list[Any]) -> list[StreamEvent]:
    parser = wire.StreamParser()
    events = [event for payload in payloads for event in parser.feed(None, payload)]
    return events + parser.finish()


def render_stream(events: list[StreamEvent], model: str = "gpt-4o-mini", **kwargs: Any) -> bytes:
    renderer = wire.StreamRenderer(model, **kwargs)
    return b"".join(renderer.render(event) for event in events) + renderer.close()


def user(text: str) -> Message:
    return Message("user", (TextPart(text),))


# --- Chat request goldens ---------------------------------------------------------------------------

WEATHER_SCHEMA: JSONObject = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}
REPORT_SCHEMA: JSONObject = {
    "type": "object",
    "properties": {"condition": {"type": "string"}, "temperature_c": {"type": "number"}},
    "required": ["condition", "temperature_c"],
    "additionalProperties": False,
}
BOARDWALK = (
    "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg/"
    "2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"
)
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def test_parse_chat_request_golden_translates_every_field_and_ignores_unknown_ones():
    expected = ChatRequest(
        model="gpt-4o",
        messages=(
            Message("system", (TextPart("You are a helpful travel assistant."),)),
            Message("system", (TextPart("Answer in English."),)),
            Message(
                "user",
                (
                    TextPart("What's the weather where these photos were taken?"),
                    ImagePart(BOARDWALK, detail="high"),
                    ImagePart(PIXEL),
                ),
            ),
            Message(
                "assistant",
                tool_calls=(
                    ToolCall(
                        "call_abc123", "get_current_weather", '{"location": "Madison, WI", "unit": "celsius"}'
                    ),
                    ToolCall("call_def456", "get_local_time", '{"location": "Madison, WI"}'),
                ),
            ),
            Message(
                "tool",
                (TextPart('{"temperature": 22, "condition": "sunny"}'),),
                tool_call_id="call_abc123",
                name="get_current_weather",
            ),
            Message(
                "tool",
                (TextPart('{"time": '), TextPart('"14:05"}')),
                tool_call_id="call_def456",
                name="get_local_time",
            ),
            Message("assistant", (TextPart("It is 14:05 in Madison, sunny and 22 °C."),)),
            user("Give me that as JSON."),
        ),
        max_tokens=512,
        temperature=0.2,
        top_p=1.0,
        stop=("\n\n\n",),
        tools=(
            Tool("get_current_weather", "Get the current weather in a given location", WEATHER_SCHEMA),
            Tool("get_local_time"),
        ),
        tool_choice=ToolChoice("auto"),
        parallel_tool_calls=True,
        response_format=ResponseFormat(
            "json_schema", schema=REPORT_SCHEMA, name="weather_report", strict=True
        ),
        stream=False,
        user="user-1234",
        seed=42,
    )
    assert wire.parse_chat_request(load("chat_request_client.json")) == expected


def base_request(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **fields}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200}, 200),
        ({"max_tokens": 100, "max_completion_tokens": 200}, 200),
        ({"max_tokens": None}, None),
    ],
)
def test_parse_takes_max_tokens_from_either_field_preferring_max_completion_tokens(fields, expected):
    assert wire.parse_chat_request(base_request(**fields)).max_tokens == expected


def test_whole_floats_are_integers_as_json_schema_says_and_fractions_are_refused():
    parsed = wire.parse_chat_request(base_request(max_tokens=100.0, seed=7.0, n=1.0))
    assert (parsed.max_tokens, parsed.seed) == (100, 7)
    assert isinstance(parsed.max_tokens, int)
    with pytest.raises(InvalidRequestError) as refused:
        wire.parse_chat_request(base_request(max_tokens=100.5))
    assert refused.value.param == "max_tokens"


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("none", ToolChoice("none")),
        ("auto", ToolChoice("auto")),
        ("required", ToolChoice("required")),
        ({"type": "function", "function": {"name": "get_weather"}}, ToolChoice("required", "get_weather")),
    ],
)
def test_parse_tool_choice_modes_and_named_function(tool_choice, expected):
    assert wire.parse_chat_request(base_request(tool_choice=tool_choice)).tool_choice == expected


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "text"}, ResponseFormat("text")),
        ({"type": "json_object"}, ResponseFormat("json_object")),
        (
            {"type": "json_schema", "json_schema": {"name": "answer"}},
            ResponseFormat("json_schema", name="answer"),
        ),
    ],
)
def test_parse_response_format_kinds(response_format, expected):
    assert wire.parse_chat_request(base_request(response_format=response_format)).response_format == expected


def test_parse_stop_list_and_null():
    assert wire.parse_chat_request(base_request(stop=["a", "b"])).stop == ("a", "b")
    assert wire.parse_chat_request(base_request(stop=None)).stop == ()


def test_parse_accepts_legacy_bare_image_url_string():
    body = base_request(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}]
    )
    assert wire.parse_chat_request(body).messages[0].parts == (ImagePart("https://x/y.png"),)


def test_parse_assistant_refusal_part_becomes_text_and_empty_content_no_parts():
    body = base_request(
        messages=[
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
            {"role": "user", "content": ""},
        ]
    )
    messages = wire.parse_chat_request(body).messages
    assert messages[0].parts == (TextPart("I can't help with that."),)
    assert messages[1].parts == ()


def test_parse_tool_message_without_matching_call_keeps_its_own_name():
    body = base_request(
        messages=[{"role": "tool", "tool_call_id": "call_1", "content": "42", "name": "answer"}]
    )
    assert wire.parse_chat_request(body).messages[0] == Message(
        "tool", (TextPart("42"),), tool_call_id="call_1", name="answer"
    )


def test_parse_accepts_n_of_one_and_valid_stream_options():
    body = base_request(n=1, stream=True, stream_options={"include_usage": True})
    request = wire.parse_chat_request(body)
    assert request.stream is True
    assert wire.stream_usage_requested(body) is True
    assert wire.stream_usage_requested(base_request(stream=True)) is False


def test_build_chat_request_golden():
    request = ChatRequest(
        model="gpt-4o-2024-08-06",
        messages=(
            Message("system", (TextPart("You are a helpful travel assistant."),)),
            Message("system", (TextPart("Answer in English."),)),
            Message(
                "user",
                (
                    TextPart("What's the weather where these photos were taken?"),
                    ImagePart("https://example.com/boardwalk.jpg", detail="high"),
                    ImagePart("data:image/jpeg;base64,/9j/4AAQSkZJRg=="),
                ),
            ),
            Message(
                "assistant",
                tool_calls=(
                    ToolCall("call_abc123", "get_current_weather", '{"location": "Madison, WI"}'),
                    ToolCall("call_def456", "get_local_time", '{"location": "Madison, WI"}'),
                ),
            ),
            Message(
                "tool",
                (TextPart('{"temperature": 22}'),),
                tool_call_id="call_abc123",
                name="get_current_weather",
            ),
            Message(
                "tool", (TextPart('{"time": "14:05"}'),), tool_call_id="call_def456", name="get_local_time"
            ),
            Message(
                "assistant",
                (TextPart("Sunny, "), TextPart("22 °C.")),
                tool_calls=(ToolCall("call_ghi789", "get_local_time", "{}"),),
            ),
            Message("tool", tool_call_id="call_ghi789", name="get_local_time"),
            user("Thanks!"),
        ),
        max_tokens=1024,
        temperature=0.7,
        top_p=0.9,
        stop=("END", "STOP"),
        tools=(
            Tool(
                "get_current_weather",
                "Get the current weather in a given location",
                {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
            ),
            Tool("get_local_time"),
        ),
        tool_choice=ToolChoice("required", "get_current_weather"),
        parallel_tool_calls=False,
        response_format=ResponseFormat("json_object"),
        stream=True,
        user="user-1234",
        seed=7,
    )
    assert wire.build_chat_request(request) == load("chat_request_upstream.json")


def test_build_minimal_request_sends_only_what_is_set():
    request = ChatRequest(model="gpt-4o-mini", messages=(user("Hi"),))
    assert wire.build_chat_request(request) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
    }


def test_build_can_spell_the_limit_max_tokens_for_older_compatible_servers():
    request = ChatRequest(model="llama3", messages=(user("Hi"),), max_tokens=64)
    assert wire.build_chat_request(request, max_tokens_field="max_tokens")["max_tokens"] == 64
    assert "max_tokens" not in wire.build_chat_request(request)


def test_build_degrades_images_outside_user_messages_and_tool_error_flags():
    image = ImagePart("https://example.com/chart.png")
    request = ChatRequest(
        model="gpt-4o",
        messages=(
            Message("system", (TextPart("Be brief."), image)),
            Message("assistant", (image,)),
            Message("tool", (image, TextPart("failed")), tool_call_id="call_1", name="plot", is_error=True),
        ),
    )
    assert wire.build_chat_request(request)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": ""},
        {"role": "tool", "tool_call_id": "call_1", "content": "failed"},
    ]


def test_build_json_schema_without_a_name_gets_the_default_name_openai_requires():
    request = ChatRequest(
        model="gpt-4o",
        messages=(user("Hi"),),
        response_format=ResponseFormat("json_schema", schema={"type": "object"}),
    )
    assert wire.build_chat_request(request)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }


# --- Chat response goldens ----------------------------------------------------------------------------


def test_parse_chat_response_text_golden_with_cached_tokens():
    assert wire.parse_chat_response(load("chat_response_text.json")) == ChatResponse(
        id="chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        model="gpt-4o-2024-08-06",
        message=Message(
            "assistant",
            (
                TextPart(
                    "The image shows a wooden boardwalk path running through a lush green field or meadow."
                ),
            ),
        ),
        finish_reason="stop",
        usage=Usage(input_tokens=1117, output_tokens=46, cached_tokens=1024),
        created=1741570283,
    )


def test_parse_chat_response_parallel_tool_calls_golden():
    assert wire.parse_chat_response(load("chat_response_tool_calls.json")) == ChatResponse(
        id="chatcmpl-9pQHkXcBGg1N4tTUlJpHxMVRvuCyN",
        model="gpt-4o-mini-2024-07-18",
        message=Message(
            "assistant",
            tool_calls=(
                ToolCall(
                    "call_62136354",
                    "get_current_weather",
                    '{"location":"San Francisco, CA","unit":"celsius"}',
                ),
                ToolCall(
                    "call_62136355", "get_current_weather", '{"location":"Tokyo, Japan","unit":"celsius"}'
                ),
            ),
        ),
        finish_reason="tool_calls",
        usage=Usage(input_tokens=82, output_tokens=54),
        created=1722266784,
    )


def reply(message: dict[str, Any], finish_reason: Any = "stop", **fields: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [choice],
        **fields,
    }


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("finish_reason", "tool_calls", "expected"),
    [
        ("stop", [], "stop"),
        ("length", [], "length"),
        ("content_filter", [], "content_filter"),
        ("tool_calls", [CALL], "tool_calls"),
        ("function_call", [CALL], "tool_calls"),
        ("stop", [CALL], "tool_calls"),  # OpenAI's answer to a forced tool_choice
        (None, [], "stop"),
        ("eos_token", [], "stop"),  # an unknown reason from a compatible server
    ],
)
def test_parse_chat_response_finish_reasons(finish_reason, tool_calls, expected):
    message = {"role": "assistant", "content": "x", "tool_calls": tool_calls}
    assert wire.parse_chat_response(reply(message, finish_reason)).finish_reason == expected


def test_parse_chat_response_refusal_becomes_the_text_and_missing_usage_is_zero():
    body = reply({"role": "assistant", "content": None, "refusal": "I'm sorry, I can't help with that."})
    response = wire.parse_chat_response(body)
    assert response.message.parts == (TextPart("I'm sorry, I can't help with that."),)
    assert response.usage == Usage()


def test_parse_chat_response_truncates_fractional_created_from_compatible_servers():
    body = reply({"role": "assistant", "content": "x"}, created=1722266784.75)
    assert wire.parse_chat_response(body).created == 1722266784


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"choices": []},
        {"choices": "nope"},
        {"choices": [{"message": None}]},
        reply({"role": "assistant", "content": 3}),
        reply({"role": "assistant", "content": "x", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}),
        reply({"role": "assistant", "content": "x"}, usage={"prompt_tokens": "many"}),
        reply({"role": "assistant", "content": "x"}, usage={"prompt_tokens_details": []}),
        reply({"role": "assistant", "content": "x"}, created="yesterday"),
    ],
)
def test_parse_chat_response_malformed_is_an_upstream_connection_error(body):
    with pytest.raises(UpstreamConnectionError) as caught:
        wire.parse_chat_response(body)
    assert caught.value.provider == "openai"


def text_response(**fields: Any) -> ChatResponse:
    defaults: dict[str, Any] = {
        "id": "chatcmpl-123",
        "model": "gpt-4o-mini",
        "message": Message("assistant", (TextPart("Hello there!"),)),
        "finish_reason": "stop",
        "usage": Usage(input_tokens=9, output_tokens=12, cached_tokens=4),
        "created": 1677652288,
    }
    return ChatResponse(**(defaults | fields))


def test_render_chat_response_golden():
    assert wire.render_chat_response(text_response()) == {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1677652288,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 12,
            "total_tokens": 21,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def test_render_chat_response_tool_calls_have_null_content_and_error_finish_renders_as_stop():
    calls = (ToolCall("call_1", "get_weather", '{"city":"Paris"}'), ToolCall("call_2", "get_time", "{}"))
    rendered: Any = wire.render_chat_response(
        text_response(message=Message("assistant", tool_calls=calls), finish_reason="error")
    )
    choice = rendered["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }
    assert choice["finish_reason"] == "stop"


def test_render_chat_response_without_text_or_calls_sends_empty_string_not_null():
    rendered: Any = wire.render_chat_response(text_response(message=Message("assistant")))
    assert rendered["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize(
    "response",
    [
        text_response(),
        text_response(
            message=Message(
                "assistant", (TextPart("Calling."),), tool_calls=(ToolCall("call_9", "f", "{}"),)
            ),
            finish_reason="tool_calls",
        ),
        text_response(message=Message("assistant"), finish_reason="error"),
    ],
)
def test_openai_sdk_accepts_rendered_chat_response(response):
    completion = ChatCompletion.model_validate(wire.render_chat_response(response))
    assert completion.id == response.id
    assert completion.choices[0].message.content == (
        response.message.text or (None if response.message.tool_calls else "")
    )
    assert [c.id for c in completion.choices[0].message.tool_calls or []] == [
        c.id for c in response.message.tool_calls
    ]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == response.usage.cached_tokens


# --- Usage: cache reads and writes, reasoning -----------------------------------------------------------

# An o-series reply's usage as OpenAI sends it: cached input inside prompt_tokens, reasoning inside
# completion_tokens.
REASONING_USAGE: dict[str, Any] = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 192,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
REASONING = Usage(input_tokens=2006, output_tokens=300, cached_tokens=1920, reasoning_tokens=192)


def test_parse_chat_response_reads_cached_and_reasoning_tokens_as_parts_of_the_totals():
    body = {**load("chat_response_text.json"), "usage": REASONING_USAGE}
    assert wire.parse_chat_response(body).usage == REASONING


def test_parse_usage_reads_cache_writes_from_the_prompt_details():
    # The OpenAI SDK's prompt_tokens_details.cache_write_tokens; OpenRouter sends it for Anthropic models.
    details = {"cached_tokens": 0, "cache_write_tokens": 100, "audio_tokens": 0}
    body = {**load("chat_response_text.json"), "usage": {**REASONING_USAGE, "prompt_tokens_details": details}}
    assert wire.parse_chat_response(body).usage == replace(REASONING, cached_tokens=0, cache_write_tokens=100)


def test_parse_usage_reads_null_details_as_absent():
    usage = {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    body = {**load("chat_response_text.json"), "usage": usage}
    assert wire.parse_chat_response(body).usage == Usage(5, 2)


@pytest.mark.parametrize(
    "usage",
    [
        {**REASONING_USAGE, "completion_tokens_details": {"reasoning_tokens": -1}},
        {**REASONING_USAGE, "completion_tokens_details": []},
        {**REASONING_USAGE, "prompt_tokens_details": {"cache_write_tokens": "9"}},
    ],
    ids=["negative-reasoning", "details-not-an-object", "cache-writes-not-a-number"],
)
def test_parse_usage_with_malformed_details_is_an_upstream_connection_error(usage):
    with pytest.raises(UpstreamConnectionError):
        wire.parse_chat_response({**load("chat_response_text.json"), "usage": usage})


def test_render_usage_reports_every_part_and_cache_writes_only_when_there_are_some():
    rendered: Any = wire.render_chat_response(text_response(usage=replace(REASONING, cache_write_tokens=64)))
    assert rendered["usage"] == {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "cache_write_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 192},
    }
    usage = ChatCompletion.model_validate(rendered).usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None and usage.completion_tokens_details is not None
    assert usage.prompt_tokens_details.cache_write_tokens == 64
    assert usage.completion_tokens_details.reasoning_tokens == 192
    plain: Any = wire.render_chat_response(text_response(usage=REASONING))
    assert plain["usage"]["prompt_tokens_details"] == {"cached_tokens": 1920}  # OpenAI's own shape


def test_stream_usage_chunk_carries_cached_and_reasoning_tokens_in_and_out():
    parser = wire.StreamParser()
    chunks = [
        chunk({"role": "assistant", "content": "Thought it through."}),
        chunk({}, "stop"),
        chunk(usage=REASONING_USAGE),  # the closing chunk of stream_options.include_usage
    ]
    events = [event for payload in chunks for event in parser.feed(None, payload)] + parser.finish()
    assert events[-2:] == [Finish("stop"), UsageReport(REASONING)]
    state = ChatCompletionStreamState()
    for payload in sse_payloads(render_stream(events)):
        state.handle_chunk(ChatCompletionChunk.model_validate(payload))
    usage = state.get_final_completion().usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None and usage.completion_tokens_details is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (2006, 300)
    assert usage.prompt_tokens_details.cached_tokens == 1920
    assert usage.completion_tokens_details.reasoning_tokens == 192


# --- Streaming ------------------------------------------------------------------------------------------


def test_stream_parser_text_golden():
    events = parse_stream(sse_payloads((GOLDEN / "stream_text.sse").read_bytes()))
    assert events == [
        StreamStart("chatcmpl-AHrUTnK7dcMNuPUKOMg5x2XlhCgEP", "gpt-4o-mini-2024-07-18", 1728925157),
        TextDelta("Hello"),
        TextDelta("!"),
        TextDelta(" How"),
        TextDelta(" can I help"),
        TextDelta(" you today?"),
        Finish("stop"),
        UsageReport(Usage(input_tokens=1309, output_tokens=9, cached_tokens=1152)),
    ]


PARALLEL_EVENTS: list[StreamEvent] = [
    StreamStart("chatcmpl-AjR1kkJqGbOXzi8Ibtm0u7YH0yJ0S", "gpt-4o-2024-08-06", 1728925157),
    ToolCallStart(0, "call_lPGEqd8ZsL4VVYX7CrMtgJ5o", "get_weather"),
    ToolCallDelta(0, '{"lo'),
    ToolCallDelta(0, "cation"),
    ToolCallDelta(0, '": "P'),
    ToolCallDelta(0, "aris"),
    ToolCallDelta(0, ", Fran"),
    ToolCallDelta(0, 'ce"}'),
    ToolCallStart(1, "call_9HqbCy3BSxk0SVWbEVvwTYbq", "get_weather"),
    ToolCallDelta(1, '{"lo'),
    ToolCallDelta(1, "cation"),
    ToolCallDelta(1, '": "Bogot'),
    ToolCallDelta(1, 'á, Colombia"}'),
    Finish("tool_calls"),
    UsageReport(Usage(input_tokens=88, output_tokens=51)),
]


def test_stream_parser_parallel_tool_calls_golden():
    events = parse_stream(sse_payloads((GOLDEN / "stream_parallel_tool_calls.sse").read_bytes()))
    assert events == PARALLEL_EVENTS


def chunk(
    delta: dict[str, Any] | None = None, finish_reason: str | None = None, **fields: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "m",
        "choices": choices,
        **fields,
    }


def test_stream_parser_finish_supplies_a_missing_finish_and_the_latest_running_usage():
    # vLLM's continuous usage stats: usage on every chunk, and this stream never names a stop reason.
    parser = wire.StreamParser()
    first = parser.feed(
        None,
        chunk({"role": "assistant", "content": "Hi"}, usage={"prompt_tokens": 3, "completion_tokens": 1}),
    )
    second = parser.feed(None, chunk({"content": "!"}, usage={"prompt_tokens": 3, "completion_tokens": 2}))
    assert first == [StreamStart("chatcmpl-1", "m", 5), TextDelta("Hi")]
    assert second == [TextDelta("!")]
    assert parser.finish() == [Finish("stop"), UsageReport(Usage(input_tokens=3, output_tokens=2))]
    assert parser.finish() == []


def test_stream_parser_owed_finish_after_tool_calls_is_tool_calls():
    parser = wire.StreamParser()
    call = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{}"}}
    assert parser.feed(None, chunk({"tool_calls": [call]})) == [
        StreamStart("chatcmpl-1", "m", 5),
        ToolCallStart(0, "call_1", "f"),
        ToolCallDelta(0, "{}"),
    ]
    assert parser.finish() == [Finish("tool_calls")]


def test_stream_parser_stop_reason_with_tool_calls_is_tool_calls_and_later_reasons_are_ignored():
    parser = wire.StreamParser()
    parser.feed(None, chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f"}}]}))
    assert parser.feed(None, chunk({}, "stop")) == [Finish("tool_calls")]
    assert parser.feed(None, chunk({}, "length")) == []


def test_stream_parser_tool_calls_without_index_follow_their_ids():
    parser = wire.StreamParser()
    events = parser.feed(
        None,
        chunk(
            {
                "tool_calls": [
                    {"id": "call_a", "function": {"name": "f", "arguments": '{"x":'}},
                    {"function": {"arguments": "1}"}},
                    {"id": "call_b", "function": {"name": "g", "arguments": "{}"}},
                ]
            }
        ),
    )
    assert events[1:] == [
        ToolCallStart(0, "call_a", "f"),
        ToolCallDelta(0, '{"x":'),
        ToolCallDelta(0, "1}"),
        ToolCallStart(1, "call_b", "g"),
        ToolCallDelta(1, "{}"),
    ]


def test_stream_parser_renumbers_upstream_tool_indices_from_zero_and_ignores_other_choices():
    parser = wire.StreamParser()
    first = chunk({"tool_calls": [{"index": 3, "id": "call_x", "function": {"name": "f", "arguments": ""}}]})
    first["choices"].append({"index": 1, "delta": {"content": "other choice"}, "finish_reason": "stop"})
    assert parser.feed(None, first)[1:] == [ToolCallStart(0, "call_x", "f")]
    assert parser.feed(None, chunk({"tool_calls": [{"index": 3, "function": {"arguments": "{}"}}]})) == [
        ToolCallDelta(0, "{}")
    ]


def test_stream_parser_error_chunk_raises_upstream_error():
    parser = wire.StreamParser()
    parser.feed(None, chunk({"content": "Hi"}))
    with pytest.raises(UpstreamConnectionError, match="The server had an error"):
        parser.feed(None, {"error": {"message": "The server had an error while processing your request."}})


def test_stream_parser_finish_without_any_chunk_is_an_upstream_error():
    with pytest.raises(UpstreamConnectionError):
        wire.StreamParser().finish()


@pytest.mark.parametrize(
    "payload",
    [
        {"choices": "x"},
        {"choices": [None]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"delta": {"tool_calls": {}}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": -1}]}}]},
        {"choices": [], "usage": {"completion_tokens": 1.5}},
    ],
)
def test_stream_parser_malformed_chunk_is_an_upstream_connection_error(payload):
    with pytest.raises(UpstreamConnectionError):
        wire.StreamParser().feed(None, payload)


SIMPLE_EVENTS: list[StreamEvent] = [
    StreamStart("chatcmpl-7", "gpt-4o-mini-2024-07-18", 1700000000),
    TextDelta("Hi"),
    ToolCallStart(0, "call_1", "f"),
    ToolCallDelta(0, "{}"),
    Finish("tool_calls"),
    UsageReport(Usage(input_tokens=5, output_tokens=3, cached_tokens=2)),
]


def expected_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-7",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def test_stream_renderer_golden_frames():
    function = {"name": "f", "arguments": ""}
    expected = [
        expected_chunk({"role": "assistant", "content": ""}),
        expected_chunk({"content": "Hi"}),
        expected_chunk(
            {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": function}]}
        ),
        expected_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        expected_chunk({}, "tool_calls"),
        expected_chunk({})
        | {
            "choices": [],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 3,
                "total_tokens": 8,
                "prompt_tokens_details": {"cached_tokens": 2},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        },
    ]
    frames = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in expected)
    assert render_stream(SIMPLE_EVENTS) == frames + b"data: [DONE]\n\n"


def test_stream_renderer_holds_early_usage_until_after_the_finish_chunk():
    renderer = wire.StreamRenderer("m")
    renderer.render(StreamStart("id", "m"))
    assert renderer.render(UsageReport(Usage(1, 2))) == b""
    frames = sse_payloads(renderer.render(Finish("length")) + renderer.close())
    assert [f["choices"][0]["finish_reason"] if f["choices"] else "usage" for f in frames] == [
        "length",
        "usage",
    ]
    assert frames[1]["usage"]["total_tokens"] == 3


def test_stream_renderer_flushes_usage_in_close_when_no_finish_came():
    renderer = wire.StreamRenderer("m")
    renderer.render(StreamStart("id", "m"))
    renderer.render(UsageReport(Usage(1, 2)))
    assert sse_payloads(renderer.close())[0]["usage"]["completion_tokens"] == 2


def test_stream_renderer_without_include_usage_sends_no_usage_chunk():
    frames = sse_payloads(render_stream(SIMPLE_EVENTS, include_usage=False))
    assert all(frame["choices"] for frame in frames)
    assert frames[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_renderer_skips_empty_text():
    renderer = wire.StreamRenderer("m")
    assert renderer.render(TextDelta("")) == b""


def reconstruct(events: list[StreamEvent]) -> tuple[str, list[tuple[str, str, str]], list[str], list[Usage]]:
    """What a stream means: its text, its tool calls (id, name, arguments), finish reasons and usage."""
    calls: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, ToolCallStart):
            calls[event.index] = [event.id, event.name, ""]
        elif isinstance(event, ToolCallDelta):
            calls[event.index][2] += event.arguments
    return (
        "".join(e.text for e in events if isinstance(e, TextDelta)),
        [(c[0], c[1], c[2]) for _, c in sorted(calls.items())],
        [e.reason for e in events if isinstance(e, Finish)],
        [e.usage for e in events if isinstance(e, UsageReport)],
    )


@pytest.mark.parametrize("name", ["stream_text.sse", "stream_parallel_tool_calls.sse"])
def test_rendered_stream_parses_back_to_the_same_meaning(name):
    original = parse_stream(sse_payloads((GOLDEN / name).read_bytes()))
    again = parse_stream(sse_payloads(render_stream(original, model="my-alias")))
    assert reconstruct(again) == reconstruct(original)
    assert isinstance(original[0], StreamStart)
    assert again[0] == replace(original[0], model="my-alias")


def test_openai_sdk_accepts_every_rendered_chunk_and_accumulates_the_final_completion():
    state = ChatCompletionStreamState()
    for payload in sse_payloads(render_stream(PARALLEL_EVENTS, model="gpt-4o")):
        state.handle_chunk(ChatCompletionChunk.model_validate(payload))
    completion = state.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []] == [
        ("call_lPGEqd8ZsL4VVYX7CrMtgJ5o", "get_weather", '{"location": "Paris, France"}'),
        ("call_9HqbCy3BSxk0SVWbEVvwTYbq", "get_weather", '{"location": "Bogotá, Colombia"}'),
    ]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (88, 51)


def test_openai_sdk_accumulates_rendered_text_stream():
    events = parse_stream(sse_payloads((GOLDEN / "stream_text.sse").read_bytes()))
    state = ChatCompletionStreamState()
    for payload in sse_payloads(render_stream(events)):
        state.handle_chunk(ChatCompletionChunk.model_validate(payload))
    completion = state.get_final_completion()
    assert completion.choices[0].message.content == "Hello! How can I help you today?"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 1152


# --- Bad input --------------------------------------------------------------------------------------------


def with_message(message: Any) -> dict[str, Any]:
    return base_request(messages=[message])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
        (base_request(model=4), "model"),
        ({"model": "m"}, "messages"),
        (base_request(messages={"role": "user"}), "messages"),
        (base_request(messages=[]), "messages"),
        (base_request(messages=["hi"]), "messages[0]"),
        (with_message({"content": "Hi"}), "messages[0].role"),
        (with_message({"role": "robot", "content": "Hi"}), "messages[0].role"),
        (with_message({"role": "function", "name": "f", "content": "Hi"}), "messages[0].role"),
        (with_message({"role": "user"}), "messages[0].content"),
        (with_message({"role": "user", "content": 7}), "messages[0].content"),
        (with_message({"role": "user", "content": [{"type": "text"}]}), "messages[0].content[0].text"),
        (with_message({"role": "user", "content": [{"type": "input_audio"}]}), "messages[0].content[0].type"),
        (with_message({"role": "system", "content": [{"type": "image_url"}]}), "messages[0].content[0].type"),
        (
            with_message({"role": "user", "content": [{"type": "image_url"}]}),
            "messages[0].content[0].image_url",
        ),
        (
            with_message(
                {"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}
            ),
            "messages[0].content[0].image_url.url",
        ),
        (with_message({"role": "tool", "content": "42"}), "messages[0].tool_call_id"),
        (with_message({"role": "assistant", "tool_calls": {}}), "messages[0].tool_calls"),
        (
            with_message(
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}],
                }
            ),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            with_message({"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}),
            "messages[0].tool_calls[0].type",
        ),
        (base_request(temperature="hot"), "temperature"),
        (base_request(temperature=True), "temperature"),
        (base_request(temperature=2.5), "temperature"),
        (base_request(top_p=-0.1), "top_p"),
        (base_request(max_tokens=0), "max_tokens"),
        (base_request(max_tokens=10.5), "max_tokens"),
        (base_request(max_completion_tokens="10"), "max_completion_tokens"),
        (base_request(n=2), "n"),
        (base_request(n="1"), "n"),
        (base_request(stop=5), "stop"),
        (base_request(stop=["a", 1]), "stop[1]"),
        (base_request(tools={}), "tools"),
        (base_request(tools=[{"function": {"name": "f"}}]), "tools[0].type"),
        (base_request(tools=[{"type": "function"}]), "tools[0].function"),
        (base_request(tools=[{"type": "function", "function": {}}]), "tools[0].function.name"),
        (
            base_request(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
            "tools[0].function.parameters",
        ),
        (
            base_request(tools=[{"type": "function", "function": {"name": "f", "strict": "yes"}}]),
            "tools[0].function.strict",
        ),
        (base_request(tool_choice="any"), "tool_choice"),
        (base_request(tool_choice={"type": "function", "function": {}}), "tool_choice.function.name"),
        (base_request(tool_choice={"type": "allowed_tools"}), "tool_choice.type"),
        (base_request(parallel_tool_calls="yes"), "parallel_tool_calls"),
        (base_request(response_format="json"), "response_format"),
        (base_request(response_format={"type": "yaml"}), "response_format.type"),
        (base_request(response_format={"type": "json_schema"}), "response_format.json_schema"),
        (
            base_request(response_format={"type": "json_schema", "json_schema": {}}),
            "response_format.json_schema.name",
        ),
        (base_request(stream="true"), "stream"),
        (base_request(stream_options={"include_usage": 1}), "stream_options.include_usage"),
        (base_request(user=123), "user"),
        (base_request(seed=1.5), "seed"),
    ],
)
def test_bad_chat_request_names_the_field(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        wire.parse_chat_request(body)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_bad_request_message_says_required_for_missing_fields():
    with pytest.raises(InvalidRequestError, match="'model' is required"):
        wire.parse_chat_request({"messages": []})


# --- Embeddings ----------------------------------------------------------------------------------------


def test_parse_embedding_request_string_and_list_inputs():
    assert wire.parse_embedding_request(
        {"model": "text-embedding-3-small", "input": "hello"}
    ) == EmbeddingRequest("text-embedding-3-small", ("hello",))
    body: JSONObject = {
        "model": "e",
        "input": ["a", "b"],
        "dimensions": 256,
        "user": "u",
        "encoding_format": "float",
    }
    assert wire.parse_embedding_request(body) == EmbeddingRequest("e", ("a", "b"), dimensions=256, user="u")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "e"}, "input"),
        ({"model": "e", "input": []}, "input"),
        ({"model": "e", "input": [1, 2, 3]}, "input"),
        ({"model": "e", "input": [[1, 2], [3]]}, "input"),
        ({"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "e", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "e", "input": "x", "user": 1}, "user"),
    ],
)
def test_bad_embedding_request_names_the_field(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        wire.parse_embedding_request(body)
    assert caught.value.param == param


def test_build_embedding_request_golden():
    request = EmbeddingRequest(
        "text-embedding-3-large", ("The food was delicious",), dimensions=1024, user="u-1"
    )
    assert wire.build_embedding_request(request) == {
        "model": "text-embedding-3-large",
        "input": ["The food was delicious"],
        "encoding_format": "float",
        "dimensions": 1024,
        "user": "u-1",
    }


def test_parse_embedding_response_golden_sorts_by_index():
    assert wire.parse_embedding_response(load("embedding_response.json")) == EmbeddingResponse(
        model="text-embedding-3-small",
        vectors=((-0.0069292834, -0.005336422, 0.0), (0.0023064255, -0.009327292, 0.015797347)),
        usage=Usage(input_tokens=8),
    )


def test_parse_embedding_response_decodes_base64_vectors():
    encoded = base64.b64encode(array.array("f", [0.5, -1.25]).tobytes()).decode()
    body: JSONObject = {"object": "list", "data": [{"index": 0, "embedding": encoded}], "model": "e"}
    assert wire.parse_embedding_response(body).vectors == ((0.5, -1.25),)


@pytest.mark.parametrize(
    "body",
    [
        {"data": None},
        {"data": [{"index": 0, "embedding": ["0.1"]}]},
        {"data": [{"index": 0, "embedding": [True]}]},
        {"data": [{"index": 0, "embedding": "***"}]},
        {"data": [{"index": 0, "embedding": "AAA="}]},
        {"data": [{"index": "0", "embedding": []}]},
    ],
)
def test_malformed_embedding_response_is_an_upstream_connection_error(body):
    with pytest.raises(UpstreamConnectionError):
        wire.parse_embedding_response(body)


EMBEDDINGS = EmbeddingResponse(
    model="text-embedding-3-small", vectors=((0.25, -0.5), (1.0, 0.0)), usage=Usage(6)
)


def test_render_embedding_response_golden_and_sdk_accepts_it():
    rendered = wire.render_embedding_response(EMBEDDINGS)
    assert rendered == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.25, -0.5]},
            {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]},
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    parsed = CreateEmbeddingResponse.model_validate(rendered)
    assert [d.embedding for d in parsed.data] == [[0.25, -0.5], [1.0, 0.0]]


def test_render_embedding_response_base64_decodes_the_way_the_sdk_does():
    assert wire.embedding_encoding({"encoding_format": "base64"}) == "base64"
    assert wire.embedding_encoding({}) == "float"
    rendered: Any = wire.render_embedding_response(EMBEDDINGS, encoding_format="base64")
    decoded = [array.array("f", base64.b64decode(item["embedding"])).tolist() for item in rendered["data"]]
    assert decoded == [[0.25, -0.5], [1.0, 0.0]]


# --- Properties ------------------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
SCHEMAS = st.dictionaries(st.text(max_size=6), JSON, max_size=3)
TEXTS = st.text(max_size=12)
NAMES = st.text(min_size=1, max_size=12)
TEXT_PARTS = st.builds(TextPart, TEXTS)
IMAGE_PARTS = st.builds(
    ImagePart,
    url=st.sampled_from(
        ["https://example.com/a.png", "data:image/png;base64,iVBORw0KGgo=", "http://x/y.jpg"]
    ),
    detail=st.sampled_from([None, "low", "high", "auto"]),
)
TOOL_CALLS = st.lists(
    st.builds(ToolCall, id=NAMES, name=NAMES, arguments=TEXTS), max_size=3, unique_by=lambda c: c.id
)


def text_only(max_size: int = 3) -> st.SearchStrategy[tuple[TextPart, ...]]:
    return st.lists(TEXT_PARTS, max_size=max_size).map(tuple)


@st.composite
def turns(draw: st.DrawFn) -> list[Message]:
    """One turn: a system or user message, or an assistant message followed by the results of its calls."""
    kind = draw(st.sampled_from(["system", "user", "assistant"]))
    if kind == "system":
        return [Message("system", draw(text_only()))]
    if kind == "user":
        return [Message("user", tuple(draw(st.lists(TEXT_PARTS | IMAGE_PARTS, max_size=3))))]
    calls = tuple(draw(TOOL_CALLS))
    results = [Message("tool", draw(text_only()), tool_call_id=c.id, name=c.name) for c in calls]
    return [Message("assistant", draw(text_only()), tool_calls=calls), *results]


TOOL_CHOICES = (
    st.none()
    | st.builds(ToolChoice, st.sampled_from(["auto", "none", "required"]))
    | st.builds(ToolChoice, st.just("required"), NAMES)
)
RESPONSE_FORMATS = (
    st.none()
    | st.builds(ResponseFormat, st.sampled_from(["text", "json_object"]))
    | st.builds(
        ResponseFormat,
        st.just("json_schema"),
        schema=st.none() | SCHEMAS,
        name=NAMES,
        strict=st.none() | st.booleans(),
    )
)
CHAT_REQUESTS = st.builds(
    ChatRequest,
    model=NAMES,
    messages=st.lists(turns(), min_size=1, max_size=4).map(lambda ts: tuple(m for t in ts for m in t)),
    max_tokens=st.none() | st.integers(1, 10**6),
    temperature=st.none() | st.floats(0, 2),
    top_p=st.none() | st.floats(0, 1),
    stop=st.lists(TEXTS, max_size=4).map(tuple),
    tools=st.lists(st.builds(Tool, NAMES, st.none() | TEXTS, st.none() | SCHEMAS), max_size=3).map(tuple),
    tool_choice=TOOL_CHOICES,
    parallel_tool_calls=st.none() | st.booleans(),
    response_format=RESPONSE_FORMATS,
    stream=st.booleans(),
    user=st.none() | TEXTS,
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
)


@given(CHAT_REQUESTS, st.sampled_from(["max_completion_tokens", "max_tokens"]))
def test_property_chat_request_survives_build_then_parse(request, max_tokens_field):
    body = orjson.loads(orjson.dumps(wire.build_chat_request(request, max_tokens_field=max_tokens_field)))
    assert wire.parse_chat_request(body) == request


@st.composite
def chat_responses(draw: st.DrawFn) -> ChatResponse:
    calls = tuple(draw(TOOL_CALLS))
    text = draw(TEXTS)
    reason = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    if reason == "stop" and calls:
        reason = "tool_calls"  # canonical form of OpenAI's forced-tool "stop"
    counts = st.integers(0, 10**9)
    return ChatResponse(
        id=draw(TEXTS),
        model=draw(TEXTS),
        message=Message("assistant", (TextPart(text),) if text else (), tool_calls=calls),
        finish_reason=reason,  # type: ignore[arg-type]
        usage=Usage(*(draw(counts) for _ in range(5))),  # OpenAI keeps every part as it is
        created=draw(st.integers(0, 2**40)),
    )


@given(chat_responses())
def test_property_chat_response_survives_render_then_parse(response):
    body = orjson.loads(orjson.dumps(wire.render_chat_response(response)))
    ChatCompletion.model_validate(body)
    assert wire.parse_chat_response(body) == response


@st.composite
def canonical_streams(draw: st.DrawFn) -> list[StreamEvent]:
    events: list[StreamEvent] = [StreamStart(draw(TEXTS), "m", draw(st.integers(0, 2**40)))]
    calls = 0
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["text", "start", "delta"] if calls else ["text", "start"]))
        if kind == "text":
            events.append(TextDelta(draw(TEXTS)))
        elif kind == "start":
            events.append(ToolCallStart(calls, draw(NAMES), draw(NAMES)))
            calls += 1
        else:
            events.append(ToolCallDelta(draw(st.integers(0, calls - 1)), draw(TEXTS)))
    finish = Finish(draw(st.sampled_from(["length", "content_filter", "tool_calls" if calls else "stop"])))
    usage = UsageReport(Usage(*(draw(st.integers(0, 10**6)) for _ in range(5))))
    ending: list[StreamEvent] = [finish, usage]
    return [*events, *draw(st.permutations(ending))]


@given(canonical_streams())
def test_property_rendered_stream_parses_back_to_the_same_meaning(events):
    rendered = render_stream(events)
    for payload in sse_payloads(rendered):
        ChatCompletionChunk.model_validate(payload)
    assert reconstruct(parse_stream(sse_payloads(rendered))) == reconstruct(events)


@given(
    st.builds(
        EmbeddingRequest,
        NAMES,
        st.lists(TEXTS, min_size=1, max_size=3).map(tuple),
        st.none() | st.integers(1, 4096),
        st.none() | TEXTS,
    )
)
def test_property_embedding_request_survives_build_then_parse(request):
    assert wire.parse_embedding_request(wire.build_embedding_request(request)) == request


VECTORS = st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=4).map(tuple)


@given(
    st.builds(
        EmbeddingResponse,
        TEXTS,
        st.lists(VECTORS, max_size=3).map(tuple),
        st.builds(Usage, st.integers(0, 10**6)),
    )
)
def test_property_embedding_response_survives_render_then_parse(response):
    for encoding in ("float", "base64"):
        body = orjson.loads(orjson.dumps(wire.render_embedding_response(response, encoding_format=encoding)))
        assert wire.parse_embedding_response(body) == response


@given(JSON)
def test_property_arbitrary_json_is_refused_only_with_invalid_request_error(body):
    for parse in (wire.parse_chat_request, wire.parse_embedding_request):
        with contextlib.suppress(InvalidRequestError):
            parse(body)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location inside a JSON value, so a test can replace any one of them."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*prefix, i))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = value.copy()
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


@given(CHAT_REQUESTS, st.data())
def test_property_corrupted_valid_body_is_refused_only_with_invalid_request_error(request, data):
    body = orjson.loads(orjson.dumps(wire.build_chat_request(request)))
    path = data.draw(st.sampled_from(paths(body)))
    corrupted = replaced(body, path, data.draw(JSON))
    try:
        parsed = wire.parse_chat_request(corrupted)
    except InvalidRequestError as exc:
        assert exc.param is None or isinstance(exc.param, str)
    else:
        assert isinstance(parsed, ChatRequest)


UPSTREAM_GOLDENS = [
    load("chat_response_text.json"),
    load("chat_response_tool_calls.json"),
    load("embedding_response.json"),
]
STREAM_GOLDENS = [
    sse_payloads((GOLDEN / name).read_bytes())
    for name in ("stream_text.sse", "stream_parallel_tool_calls.sse")
]


@st.composite
def corrupted(draw: st.DrawFn, valid: Any) -> Any:
    """`valid` with one location (possibly the whole) replaced by arbitrary JSON."""
    return replaced(valid, draw(st.sampled_from(paths(valid))), draw(JSON))


@given(JSON | st.sampled_from(UPSTREAM_GOLDENS).flatmap(corrupted))
def test_property_malformed_upstream_reply_fails_only_with_upstream_connection_error(body):
    for parse in (wire.parse_chat_response, wire.parse_embedding_response):
        with contextlib.suppress(UpstreamConnectionError):
            parse(body)


@given(st.sampled_from(STREAM_GOLDENS).flatmap(corrupted))
def test_property_malformed_upstream_stream_fails_only_with_upstream_connection_error(chunks):
    parser = wire.StreamParser()
    with contextlib.suppress(UpstreamConnectionError):
        for payload in chunks if isinstance(chunks, list) else [chunks]:
            parser.feed(None, payload)
        parser.finish()
