"""Tests for the Anthropic Messages codec: reference samples, round trips, bad input and SDK acceptance."""

from __future__ import annotations

import copy
import itertools
import string
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from anthropic._streaming import SSEDecoder
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SDKMessage
from anthropic.types import RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    Reasoning,
    ResponseFormat,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    Usage,
    UsageReport,
)
from ferryman.errors import InvalidRequestError, UpstreamConnectionError, UpstreamStatusError
from ferryman.wire import anthropic as wire

STREAM_EVENT = TypeAdapter(RawMessageStreamEvent)
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}


# --- Golden: requests ----------------------------------------------------------------------------

REFERENCE_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": "You are a weather assistant.",
    "messages": [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="},
                },
                {
                    "type": "image",
                    "source": {
                        "type": "url",
                        "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/ant.jpg",
                    },
                },
                {
                    "type": "text",
                    "text": "What's the weather in these two cities?",
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "Two cities: two calls.",
                    "signature": "EqQBCgIYAhIM1gbcDa9GJwZA",
                },
                {"type": "text", "text": "I'll check both cities."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "get_weather",
                    "input": {"location": "San Francisco, CA"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_01B3kq7D8TbM1nG2vXzYwQ5e",
                    "name": "get_weather",
                    "input": {"location": "New York, NY", "unit": "fahrenheit"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                    "content": "15 degrees",
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B3kq7D8TbM1nG2vXzYwQ5e",
                    "content": [{"type": "text", "text": "error: weather service unavailable"}],
                    "is_error": True,
                },
                {"type": "text", "text": "Anything else I should know?"},
            ],
        },
    ],
    "tools": [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_SCHEMA,
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["\n\nHuman:"],
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 5,
    "metadata": {"user_id": "13803d75-b4b5-4c3e-b2a2-6f21399b021b"},
    "stream": True,
}

REFERENCE_REQUEST_CANONICAL = ChatRequest(
    model="claude-sonnet-4-5",
    messages=(
        Message(role="system", parts=(TextPart("You are a weather assistant."),)),
        Message(
            role="user",
            parts=(
                ImagePart("data:image/jpeg;base64,/9j/4AAQSkZJRg=="),
                ImagePart("https://upload.wikimedia.org/wikipedia/commons/a/a7/ant.jpg"),
                TextPart("What's the weather in these two cities?", {"type": "ephemeral"}),
            ),
        ),
        Message(
            role="assistant",
            parts=(TextPart("I'll check both cities."),),
            thinking=(ThinkingPart("Two cities: two calls.", "EqQBCgIYAhIM1gbcDa9GJwZA"),),
            tool_calls=(
                ToolCall("toolu_01A09q90qw90lq917835lq9", "get_weather", '{"location":"San Francisco, CA"}'),
                ToolCall(
                    "toolu_01B3kq7D8TbM1nG2vXzYwQ5e",
                    "get_weather",
                    '{"location":"New York, NY","unit":"fahrenheit"}',
                ),
            ),
        ),
        Message(
            role="tool",
            parts=(TextPart("15 degrees"),),
            tool_call_id="toolu_01A09q90qw90lq917835lq9",
            name="get_weather",
        ),
        Message(
            role="tool",
            parts=(TextPart("error: weather service unavailable"),),
            tool_call_id="toolu_01B3kq7D8TbM1nG2vXzYwQ5e",
            name="get_weather",
            is_error=True,
        ),
        Message(role="user", parts=(TextPart("Anything else I should know?"),)),
    ),
    max_tokens=1024,
    temperature=0.5,
    top_p=0.9,
    stop=("\n\nHuman:",),
    tools=(Tool("get_weather", "Get the current weather in a given location", WEATHER_SCHEMA),),
    tool_choice=ToolChoice("required"),
    parallel_tool_calls=False,
    stream=True,
    user="13803d75-b4b5-4c3e-b2a2-6f21399b021b",
)


def test_reference_request_parses_to_canonical_with_system_tools_images_and_parallel_results():
    assert wire.parse_chat_request(REFERENCE_REQUEST) == REFERENCE_REQUEST_CANONICAL


def test_system_blocks_and_system_turns_parse_to_system_messages_in_place_with_cache_control():
    body: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 10,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Long shared context.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": [{"type": "text", "text": "Now answer in French."}]},
        ],
    }
    assert wire.parse_chat_request(body).messages == (
        Message(role="system", parts=(TextPart("You are terse."),)),
        Message(role="system", parts=(TextPart("Long shared context.", {"type": "ephemeral"}),)),
        Message(role="user", parts=(TextPart("Hi"),)),
        Message(role="system", parts=(TextPart("Now answer in French."),)),
    )


@pytest.mark.parametrize(
    ("tool_choice", "expected_choice", "expected_parallel"),
    [
        ({"type": "auto"}, ToolChoice("auto"), None),
        ({"type": "any", "disable_parallel_tool_use": False}, ToolChoice("required"), True),
        ({"type": "tool", "name": "get_weather"}, ToolChoice("required", "get_weather"), None),
        ({"type": "none"}, ToolChoice("none"), None),
    ],
)
def test_tool_choice_maps_to_canonical_mode_and_parallel_switch(
    tool_choice, expected_choice, expected_parallel
):
    req = wire.parse_chat_request({**_minimal_body(), "tool_choice": tool_choice})
    assert (req.tool_choice, req.parallel_tool_calls) == (expected_choice, expected_parallel)


OPENAI_SHAPED_REQUEST = ChatRequest(
    model="claude-sonnet-4-5",
    messages=(
        Message(role="system", parts=(TextPart("You are terse."),)),
        Message(
            role="user",
            parts=(
                TextPart("Weather in Paris and Rome?"),
                ImagePart("data:image/png;base64,iVBORw0KGgo=", detail="high"),
            ),
        ),
        Message(
            role="assistant",
            parts=(TextPart(""),),
            tool_calls=(
                ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
                ToolCall("call_2", "get_weather", "not json"),
            ),
        ),
        Message(role="tool", parts=(TextPart("18C"),), tool_call_id="call_1", name="get_weather"),
        Message(
            role="tool",
            parts=(TextPart("timeout"),),
            tool_call_id="call_2",
            name="get_weather",
            is_error=True,
        ),
        Message(role="system", parts=(TextPart("Answer in French."),)),
        Message(
            role="user", parts=(TextPart("Also, is it sunny?"), ImagePart("https://example.com/sky.jpg"))
        ),
    ),
    max_tokens=None,
    temperature=1.5,
    stop=("END",),
    tools=(
        Tool(
            "get_weather",
            "Current weather for a city",
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        ),
        Tool("ping"),
    ),
    tool_choice=ToolChoice("required", "get_weather"),
    parallel_tool_calls=True,
    response_format=ResponseFormat(
        "json_schema", schema={"type": "object", "properties": {"answer": {"type": "string"}}}, name="answer"
    ),
    stream=True,
    user="u-42",
    seed=7,
)

OPENAI_SHAPED_REQUEST_BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 4096,
    "system": (
        "You are terse.\n\nAnswer in French.\n\n"
        "Respond with a single valid JSON object and nothing else: no prose, no code fences. "
        'It must conform to this JSON Schema:\n{"type":"object","properties":{"answer":{"type":"string"}}}'
    ),
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris and Rome?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "timeout", "is_error": True},
                {"type": "text", "text": "Also, is it sunny?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/sky.jpg"}},
            ],
        },
    ],
    "temperature": 1.0,
    "stop_sequences": ["END"],
    "tools": [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
    ],
    "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": False},
    "metadata": {"user_id": "u-42"},
    "stream": True,
}


def test_openai_shaped_request_builds_to_exact_anthropic_body():
    assert wire.build_chat_request(OPENAI_SHAPED_REQUEST) == OPENAI_SHAPED_REQUEST_BODY


def test_build_merges_same_role_runs_and_puts_tool_results_first_in_a_user_turn():
    req = ChatRequest(
        model="m",
        messages=(
            Message(role="user", parts=(TextPart("a"),)),
            Message(role="user", parts=(TextPart("b"),)),
            Message(role="assistant", parts=(TextPart("c"),)),
            Message(role="assistant", tool_calls=(ToolCall("t1", "f", "{}"),)),
            Message(role="user", parts=(TextPart("d"),)),
            Message(role="tool", tool_call_id="t1"),
        ),
    )
    assert wire.build_chat_request(req)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "c"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1"}, {"type": "text", "text": "d"}],
        },
    ]


def test_build_drops_images_from_assistant_turns_and_asks_json_object_mode_in_the_system_prompt():
    req = ChatRequest(
        model="m",
        messages=(
            Message(role="user", parts=(TextPart("q"),)),
            Message(role="assistant", parts=(TextPart("see"), ImagePart("https://example.com/a.png"))),
        ),
        response_format=ResponseFormat("json_object"),
    )
    body: Any = wire.build_chat_request(req)
    assert body["messages"][1] == {"role": "assistant", "content": "see"}
    assert (
        body["system"]
        == "Respond with a single valid JSON object and nothing else: no prose, no code fences."
    )


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice("auto"), None, {"type": "auto"}),
        (ToolChoice("required"), None, {"type": "any"}),
        (ToolChoice("none"), False, {"type": "none"}),
    ],
)
def test_build_tool_choice_carries_the_parallel_switch(choice, parallel, expected):
    req = ChatRequest(
        model="m",
        messages=(Message(role="user", parts=(TextPart("q"),)),),
        tools=(Tool("f", parameters={"type": "object"}),),
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )
    assert wire.build_chat_request(req).get("tool_choice") == expected


def test_build_sends_temperature_alone_when_top_p_is_also_set():
    req = ChatRequest(model="m", messages=(), temperature=0.2, top_p=0.9)
    assert wire.build_chat_request(req) == {
        "model": "m",
        "max_tokens": 4096,
        "messages": [],
        "temperature": 0.2,
    }


def test_build_omits_tool_choice_when_there_are_no_tools():
    req = ChatRequest(model="m", messages=(), tool_choice=ToolChoice("none"), parallel_tool_calls=False)
    assert wire.build_chat_request(req) == {"model": "m", "max_tokens": 4096, "messages": []}


# --- Golden: responses ---------------------------------------------------------------------------

REFERENCE_RESPONSE: dict[str, Any] = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Two cities: two calls.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
        {"type": "text", "text": "I'll look up both cities."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "celsius"},
        },
        {
            "type": "tool_use",
            "id": "toolu_01B3kq7D8TbM1nG2vXzYwQ5e",
            "name": "get_weather",
            "input": {"location": "New York, NY", "unit": "celsius"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2048,
        "output_tokens": 95,
        "service_tier": "standard",
    },
}


def test_reference_response_parses_with_thinking_parallel_tool_calls_and_cache_usage():
    assert wire.parse_chat_response(REFERENCE_RESPONSE) == ChatResponse(
        id="msg_01Aq9w938a90dw8q",
        model="claude-sonnet-4-5-20250929",
        message=Message(
            role="assistant",
            parts=(TextPart("I'll look up both cities."),),
            thinking=(ThinkingPart("Two cities: two calls.", "EqQBCgIYAhIM1gbcDa9GJwZA"),),
            tool_calls=(
                ToolCall(
                    "toolu_01A09q90qw90lq917835lq9",
                    "get_weather",
                    '{"location":"San Francisco, CA","unit":"celsius"}',
                ),
                ToolCall(
                    "toolu_01B3kq7D8TbM1nG2vXzYwQ5e",
                    "get_weather",
                    '{"location":"New York, NY","unit":"celsius"}',
                ),
            ),
        ),
        finish_reason="tool_calls",
        usage=Usage(input_tokens=2160, output_tokens=95, cached_tokens=2048, cache_write_tokens=100),
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons_map_to_canonical_finish_reasons(stop_reason, finish_reason):
    body = {**REFERENCE_RESPONSE, "stop_reason": stop_reason}
    assert wire.parse_chat_response(body).finish_reason == finish_reason


RENDERED_RESPONSE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet",
    "content": [
        {"type": "text", "text": "Let me look that up."},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "ferries", "limit": 3}},
        {"type": "tool_use", "id": "toolu_2", "name": "lookup", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 40,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 60,
        "output_tokens": 20,
    },
}


def test_canonical_response_renders_to_exact_message_the_sdk_accepts():
    resp = ChatResponse(
        id="msg_013Zva2CMHLNnXjNJJKqJ2EF",
        model="claude-sonnet",
        message=Message(
            role="assistant",
            parts=(TextPart("Let me look that up."),),
            tool_calls=(
                ToolCall("toolu_1", "lookup", '{"q": "ferries", "limit": 3}'),
                ToolCall("toolu_2", "lookup", ""),
            ),
        ),
        finish_reason="tool_calls",
        usage=Usage(input_tokens=100, output_tokens=20, cached_tokens=60),
        created=1_700_000_000,
    )
    rendered = wire.render_chat_response(resp)
    assert rendered == RENDERED_RESPONSE
    sdk_message = SDKMessage.model_validate(rendered)
    assert sdk_message.stop_reason == "tool_use"
    assert sdk_message.usage.cache_read_input_tokens == 60


def test_usage_renders_cache_writes_apart_and_reasoning_inside_output():
    # From an upstream that reports everything (say OpenAI behind a gateway): Anthropic has no reasoning
    # count, and bills thinking as output, so reasoning stays inside output_tokens.
    usage = Usage(
        input_tokens=3000, output_tokens=400, cached_tokens=2048, cache_write_tokens=900, reasoning_tokens=250
    )
    rendered: Any = wire.render_chat_response(
        ChatResponse(
            id="msg_1", model="m", message=Message(role="assistant"), finish_reason="stop", usage=usage
        )
    )
    assert rendered["usage"] == {
        "input_tokens": 52,
        "cache_creation_input_tokens": 900,
        "cache_read_input_tokens": 2048,
        "output_tokens": 400,
    }
    sdk_usage = SDKMessage.model_validate(rendered).usage
    assert (sdk_usage.cache_creation_input_tokens, sdk_usage.cache_read_input_tokens) == (900, 2048)
    assert wire.parse_chat_response(rendered).usage == replace(usage, reasoning_tokens=0)


def test_usage_with_more_cache_than_input_renders_no_negative_input():
    usage = Usage(input_tokens=10, output_tokens=1, cached_tokens=8, cache_write_tokens=8)
    rendered: Any = wire.render_chat_response(
        ChatResponse(
            id="msg_1", model="m", message=Message(role="assistant"), finish_reason="stop", usage=usage
        )
    )
    assert rendered["usage"]["input_tokens"] == 0


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), ("error", "end_turn")],
)
def test_finish_reasons_render_as_anthropic_stop_reasons(finish_reason, stop_reason):
    resp = ChatResponse(
        id="msg_1", model="m", message=Message(role="assistant"), finish_reason=finish_reason, usage=Usage()
    )
    assert wire.render_chat_response(resp)["stop_reason"] == stop_reason


@pytest.mark.parametrize(
    "body",
    [
        [],
        {k: v for k, v in REFERENCE_RESPONSE.items() if k != "id"},
        {**REFERENCE_RESPONSE, "content": "hello"},
        {**REFERENCE_RESPONSE, "content": [{"type": "tool_use", "id": "t", "name": "f"}]},
        {**REFERENCE_RESPONSE, "content": ["text"]},
        {k: v for k, v in REFERENCE_RESPONSE.items() if k != "usage"},
        {**REFERENCE_RESPONSE, "usage": {"input_tokens": "12", "output_tokens": 1}},
        {**REFERENCE_RESPONSE, "stop_reason": 3},
    ],
    ids=[
        "not-an-object",
        "no-id",
        "content-string",
        "tool-use-no-input",
        "block-not-object",
        "no-usage",
        "usage-string",
        "stop-reason-number",
    ],
)
def test_malformed_upstream_reply_is_a_connection_error(body):
    with pytest.raises(UpstreamConnectionError) as caught:
        wire.parse_chat_response(body)
    assert caught.value.provider == "anthropic"


# --- Golden: streams -----------------------------------------------------------------------------


def _block_delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def _json_delta(index: int, partial_json: str) -> tuple[str, dict[str, Any]]:
    return _block_delta(index, {"type": "input_json_delta", "partial_json": partial_json})


def _block_stop(index: int) -> tuple[str, dict[str, Any]]:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


REFERENCE_STREAM: list[tuple[str, dict[str, Any]]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 472,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 1024,
                    "output_tokens": 2,
                },
                "content": [],
                "stop_reason": None,
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    _block_delta(0, {"type": "text_delta", "text": "Okay,"}),
    _block_delta(0, {"type": "text_delta", "text": " checking both."}),
    _block_stop(0),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    _json_delta(1, ""),
    _json_delta(1, '{"location": "San Fra'),
    _json_delta(1, 'ncisco, CA"}'),
    _block_stop(1),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01K2mFq8yHrA3ZbW9xNcT7Ld",
                "name": "get_time",
                "input": {},
            },
        },
    ),
    _json_delta(2, '{"timezone": '),
    _json_delta(2, '"America/New_York"}'),
    _block_stop(2),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]

REFERENCE_STREAM_CANONICAL: list[StreamEvent] = [
    StreamStart(id="msg_014p7gG3wDgGV9EUtLvnow3U", model="claude-sonnet-4-5-20250929"),
    TextDelta("Okay,"),
    TextDelta(" checking both."),
    ToolCallStart(0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"),
    ToolCallDelta(0, '{"location": "San Fra'),
    ToolCallDelta(0, 'ncisco, CA"}'),
    ToolCallStart(1, "toolu_01K2mFq8yHrA3ZbW9xNcT7Ld", "get_time"),
    ToolCallDelta(1, '{"timezone": '),
    ToolCallDelta(1, '"America/New_York"}'),
    Finish("tool_calls"),
    UsageReport(Usage(input_tokens=1496, output_tokens=89, cached_tokens=1024)),
]


def _feed_all(events: list[tuple[str, dict[str, Any]]]) -> list[StreamEvent]:
    parser = wire.StreamParser()
    out = [item for name, data in events for item in parser.feed(name, data)]
    return out + parser.finish()


def test_reference_stream_parses_to_exact_canonical_events():
    assert _feed_all(REFERENCE_STREAM) == REFERENCE_STREAM_CANONICAL


def test_stream_keeps_thinking_skips_server_tools_and_gives_parameterless_calls_empty_object_arguments():
    events = [
        REFERENCE_STREAM[0],
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            },
        ),
        _block_delta(0, {"type": "thinking_delta", "thinking": "Let me search."}),
        _block_delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}),
        _block_stop(0),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "server_tool_use",
                    "id": "srvtoolu_1",
                    "name": "web_search",
                    "input": {},
                },
            },
        ),
        _json_delta(1, '{"query": "ferries"}'),
        _block_stop(1),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_9", "name": "now", "input": {}},
            },
        ),
        _json_delta(2, ""),
        _block_stop(2),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert _feed_all(events)[1:] == [
        ThinkingDelta(0, "Let me search."),
        ThinkingDelta(0, signature="EqQBCgIYAhIM"),
        ToolCallStart(0, "toolu_9", "now"),
        ToolCallDelta(0, "{}"),
        Finish("tool_calls"),
        UsageReport(Usage(input_tokens=1496, output_tokens=7, cached_tokens=1024)),
    ]


def test_cumulative_usage_in_message_delta_overrides_message_start():
    parser = wire.StreamParser()
    parser.feed("message_start", REFERENCE_STREAM[0][1])
    usage: dict[str, Any] = {"input_tokens": 500, "cache_read_input_tokens": 2000, "output_tokens": 12}
    events = parser.feed(
        "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}
    )
    assert events == [
        Finish("stop"),
        UsageReport(Usage(input_tokens=2500, output_tokens=12, cached_tokens=2000)),
    ]
    assert parser.feed("message_stop", {"type": "message_stop"}) == []
    assert parser.finish() == []


def _message_start_with_cache_writes() -> dict[str, Any]:
    message = {**REFERENCE_STREAM[0][1]["message"]}
    message["usage"] = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 1800,
        "cache_read_input_tokens": 1024,
        "cache_creation": {"ephemeral_5m_input_tokens": 1800, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 1,
    }
    return {"type": "message_start", "message": message}


def test_stream_cache_writes_from_message_start_survive_a_message_delta_that_omits_them():
    parser = wire.StreamParser()
    parser.feed("message_start", _message_start_with_cache_writes())
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 40},
    }
    assert parser.feed("message_delta", delta) == [
        Finish("stop"),
        UsageReport(Usage(input_tokens=2836, output_tokens=40, cached_tokens=1024, cache_write_tokens=1800)),
    ]


def test_stream_cache_counts_repeated_in_message_delta_win():
    # Recent API versions repeat the (cumulative) input and cache counts in message_delta.
    parser = wire.StreamParser()
    parser.feed("message_start", _message_start_with_cache_writes())
    usage = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 0,
        "output_tokens": 40,
    }
    delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}
    assert parser.feed("message_delta", delta)[-1] == UsageReport(
        Usage(input_tokens=2012, output_tokens=40, cached_tokens=0, cache_write_tokens=2000)
    )


def test_truncated_stream_is_finished_with_stop_and_the_usage_seen_so_far():
    parser = wire.StreamParser()
    parser.feed("message_start", REFERENCE_STREAM[0][1])
    parser.feed(*REFERENCE_STREAM[1])
    assert parser.finish() == [
        Finish("stop"),
        UsageReport(Usage(input_tokens=1496, output_tokens=2, cached_tokens=1024)),
    ]


@pytest.mark.parametrize(("error_type", "status"), [("overloaded_error", 529), ("api_error", 500)])
def test_stream_error_event_raises_upstream_status_error(error_type, status):
    parser = wire.StreamParser()
    parser.feed(*REFERENCE_STREAM[0])
    with pytest.raises(UpstreamStatusError) as caught:
        parser.feed("error", {"type": "error", "error": {"type": error_type, "message": "Overloaded"}})
    assert (caught.value.upstream_status, caught.value.provider) == (status, "anthropic")
    assert "Overloaded" in caught.value.message


@pytest.mark.parametrize(
    "events",
    [
        [REFERENCE_STREAM[1]],
        [
            REFERENCE_STREAM[0],
            ("content_block_start", {"type": "content_block_start", "content_block": {"type": "text"}}),
        ],
        [
            REFERENCE_STREAM[0],
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}},
            ),
        ],
        [REFERENCE_STREAM[0], ("message_delta", {"type": "message_delta", "delta": {"stop_reason": 1}})],
        [("message_start", {"type": "message_start", "message": {"id": "msg_1"}})],
    ],
    ids=[
        "block-before-start",
        "start-without-index",
        "text-delta-without-text",
        "stop-reason-number",
        "start-without-model",
    ],
)
def test_malformed_stream_event_is_a_connection_error(events):
    parser = wire.StreamParser()
    with pytest.raises(UpstreamConnectionError):
        for name, data in events:
            parser.feed(name, data)


def test_stream_without_any_event_is_a_connection_error():
    with pytest.raises(UpstreamConnectionError):
        wire.StreamParser().finish()


def _decode_frames(frames: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split rendered bytes the way the anthropic SDK does, into (event name, JSON data) pairs."""
    return [(sse.event or "", sse.json()) for sse in SSEDecoder().iter_bytes(iter([frames]))]


def _render_all(events: list[StreamEvent], model: str = "claude-sonnet") -> bytes:
    renderer = wire.StreamRenderer(model)
    return b"".join(renderer.render(event) for event in events) + renderer.close()


def _sdk_accumulate(events: list[tuple[str, dict[str, Any]]]) -> SDKMessage:
    """Validate every event with the SDK's types and accumulate them as `client.messages.stream` does."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for name, data in events:
        event = STREAM_EVENT.validate_python(data)
        assert event.type == name
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert events[-1][0] == "message_stop"
    assert snapshot is not None
    return SDKMessage.model_validate(snapshot.to_dict())


def test_renderer_produces_exact_anthropic_event_sequence():
    frames = _render_all(
        [
            StreamStart(id="msg_1", model="claude-sonnet-4-5-20250929"),
            TextDelta("Hi"),
            ToolCallStart(0, "toolu_1", "lookup"),
            ToolCallDelta(0, '{"q":'),
            ToolCallDelta(0, '"x"}'),
            Finish("tool_calls"),
            UsageReport(Usage(input_tokens=10, output_tokens=5, cached_tokens=4)),
        ],
        model="claude-sonnet",
    )
    assert frames.startswith(
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    )
    assert _decode_frames(frames) == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _block_delta(0, {"type": "text_delta", "text": "Hi"}),
        _block_stop(0),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}},
            },
        ),
        _json_delta(1, '{"q":'),
        _json_delta(1, '"x"}'),
        _block_stop(1),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {
                    "input_tokens": 6,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 4,
                    "output_tokens": 5,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_rendered_reference_stream_is_accumulated_by_the_sdk_and_parsed_back_identically():
    frames = _render_all(REFERENCE_STREAM_CANONICAL)
    events = _decode_frames(frames)
    message = _sdk_accumulate(events)
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Okay, checking both."  # type: ignore[union-attr]
    assert message.content[1].input == {"location": "San Francisco, CA"}  # type: ignore[union-attr]
    assert message.content[2].input == {"timezone": "America/New_York"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert (
        message.usage.input_tokens,
        message.usage.cache_read_input_tokens,
        message.usage.output_tokens,
    ) == (472, 1024, 89)
    reparsed = _feed_all(events)
    assert reparsed[0] == StreamStart(id="msg_014p7gG3wDgGV9EUtLvnow3U", model="claude-sonnet")
    assert reparsed[1:] == REFERENCE_STREAM_CANONICAL[1:]


@pytest.mark.parametrize(
    "tail",
    [
        [UsageReport(Usage(input_tokens=3, output_tokens=2)), Finish("length")],
        [Finish("length"), UsageReport(Usage(input_tokens=3, output_tokens=2))],
    ],
    ids=["usage-first", "finish-first"],
)
def test_message_delta_waits_for_both_finish_and_usage(tail):
    renderer = wire.StreamRenderer("m")
    renderer.render(StreamStart(id="msg_1", model="m"))
    renderer.render(TextDelta("abc"))
    first, second = (renderer.render(event) for event in tail)
    assert b"message_delta" not in first
    assert [name for name, _ in _decode_frames(second)][-2:] == ["message_delta", "message_stop"]
    assert renderer.close() == b""
    assert renderer.render(TextDelta("late")) == b""


def test_rendered_stream_carries_cache_reads_and_writes_to_the_sdk_and_back():
    usage = Usage(
        input_tokens=2836, output_tokens=40, cached_tokens=1024, cache_write_tokens=1800, reasoning_tokens=9
    )
    events: list[StreamEvent] = [
        StreamStart(id="msg_1", model="m"),
        TextDelta("Hi"),
        Finish("stop"),
        UsageReport(usage),
    ]
    frames = _decode_frames(_render_all(events))
    message = _sdk_accumulate(frames)
    assert (
        message.usage.input_tokens,
        message.usage.cache_creation_input_tokens,
        message.usage.cache_read_input_tokens,
        message.usage.output_tokens,
    ) == (12, 1800, 1024, 40)
    assert _feed_all(frames)[-1] == UsageReport(replace(usage, reasoning_tokens=0))


def test_close_ends_a_stream_that_never_reported_usage_or_finish():
    renderer = wire.StreamRenderer("m")
    frames = renderer.render(StreamStart(id="msg_1", model="m")) + renderer.render(TextDelta("partial"))
    events = _decode_frames(frames + renderer.close())
    message = _sdk_accumulate(events)
    assert (message.stop_reason, message.usage.output_tokens) == ("end_turn", 0)
    assert message.content[0].text == "partial"  # type: ignore[union-attr]


def test_renderer_without_stream_start_still_opens_the_message():
    events = _decode_frames(_render_all([TextDelta("x"), Finish("stop")]))
    message = _sdk_accumulate(events)
    assert message.id.startswith("msg_")
    assert message.model == "claude-sonnet"


def test_interleaved_parallel_argument_fragments_land_in_their_own_tool_use():
    frames = _render_all(
        [
            StreamStart(id="msg_1", model="m"),
            ToolCallStart(0, "call_a", "f"),
            ToolCallStart(1, "call_b", "g"),
            ToolCallDelta(0, '{"a":'),
            ToolCallDelta(1, '{"b":2}'),
            ToolCallDelta(0, "1}"),
            Finish("tool_calls"),
        ]
    )
    message = _sdk_accumulate(_decode_frames(frames))
    assert [(b.id, b.input) for b in message.content] == [("call_a", {"a": 1}), ("call_b", {"b": 2})]  # type: ignore[union-attr]


# --- Property tests ------------------------------------------------------------------------------

TEXT = st.text(min_size=1, max_size=12)
NAMES = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=10)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
ARGUMENTS = st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3).map(
    lambda args: orjson.dumps(args).decode()
)
IMAGES = st.builds(
    lambda media_type, data: ImagePart(f"data:{media_type};base64,{data}"),
    st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]),
    st.text(alphabet=string.ascii_letters + string.digits + "+/=", min_size=1, max_size=12),
) | st.builds(
    lambda path: ImagePart(f"https://example.com/{path}.png"),
    st.text(string.ascii_lowercase, min_size=1, max_size=8),
)
USER_PARTS = st.lists(st.builds(TextPart, TEXT) | IMAGES, min_size=1, max_size=3).map(tuple)
FINISH_REASONS: list[FinishReason] = ["stop", "length", "tool_calls", "content_filter"]


@st.composite
def tool_calls(draw: st.DrawFn, first_id: int) -> tuple[ToolCall, ...]:
    count = draw(st.integers(0, 3))
    return tuple(ToolCall(f"toolu_{first_id + i}", draw(NAMES), draw(ARGUMENTS)) for i in range(count))


@st.composite
def conversations(draw: st.DrawFn) -> tuple[Message, ...]:
    """Alternating turns as Anthropic allows them: tool results (and maybe user text) answer each call."""
    messages = [Message(role="system", parts=(TextPart(draw(TEXT)),))] if draw(st.booleans()) else []
    pending: tuple[ToolCall, ...] = ()
    for _ in range(draw(st.integers(1, 3))):
        for call in pending:
            parts = tuple(draw(st.lists(st.builds(TextPart, TEXT) | IMAGES, max_size=2)))
            messages.append(
                Message("tool", parts, tool_call_id=call.id, name=call.name, is_error=draw(st.booleans()))
            )
        if not pending or draw(st.booleans()):
            messages.append(Message(role="user", parts=draw(USER_PARTS)))
        pending = draw(tool_calls(first_id=len(messages) * 10))
        texts = tuple(TextPart(t) for t in draw(st.lists(TEXT, min_size=0 if pending else 1, max_size=2)))
        messages.append(Message(role="assistant", parts=texts, tool_calls=pending))
    return tuple(messages)


@st.composite
def requests(draw: st.DrawFn) -> ChatRequest:
    """Canonical requests restricted to what the Messages API can carry back unchanged."""
    schema = st.builds(
        lambda props: {"type": "object", "properties": {p: {"type": "string"} for p in props}},
        st.lists(NAMES, max_size=3),
    )
    tools = tuple(
        draw(
            st.lists(
                st.builds(Tool, NAMES, st.none() | st.text(max_size=10), schema),
                max_size=3,
                unique_by=lambda t: t.name,
            )
        )
    )
    choice = None
    if tools:
        named = st.sampled_from([t.name for t in tools]).map(lambda name: ToolChoice("required", name))
        choice = draw(
            st.none()
            | st.sampled_from([ToolChoice("auto"), ToolChoice("none"), ToolChoice("required")])
            | named
        )
    parallel = draw(st.none() | st.booleans()) if choice is not None and choice.mode != "none" else None
    unit = st.none() | st.floats(0, 1)
    temperature = draw(unit)
    return ChatRequest(
        model=draw(TEXT),
        messages=draw(conversations()),
        max_tokens=draw(st.integers(1, 200_000)),
        temperature=temperature,
        top_p=draw(unit) if temperature is None else None,  # the pair is not sent: see the next test
        stop=tuple(draw(st.lists(TEXT, max_size=3))),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        stream=draw(st.booleans()),
        user=draw(st.none() | TEXT),
    )


@st.composite
def anthropic_usages(draw: st.DrawFn, limit: int = 10**7) -> Usage:
    """Usage Anthropic can carry: cache reads and writes inside the input, and no reasoning count."""
    input_tokens = draw(st.integers(0, limit))
    cached = draw(st.integers(0, input_tokens))
    written = draw(st.integers(0, input_tokens - cached))
    return Usage(input_tokens, draw(st.integers(0, limit)), cached, written)


@st.composite
def responses(draw: st.DrawFn) -> ChatResponse:
    return ChatResponse(
        id=draw(TEXT),
        model=draw(TEXT),
        message=Message(
            role="assistant",
            parts=tuple(TextPart(t) for t in draw(st.lists(st.text(max_size=12), max_size=3))),
            tool_calls=draw(tool_calls(first_id=0)),
        ),
        finish_reason=draw(st.sampled_from(FINISH_REASONS)),
        usage=draw(anthropic_usages()),
    )


@settings(deadline=None)
@given(requests())
def test_requests_survive_build_then_parse(req):
    body = orjson.loads(orjson.dumps(wire.build_chat_request(req)))  # what actually crosses the wire
    assert wire.parse_chat_request(body) == req


@settings(deadline=None)
@given(responses())
def test_responses_survive_render_then_parse_and_the_sdk_accepts_them(resp):
    body = orjson.loads(orjson.dumps(wire.render_chat_response(resp)))
    assert wire.parse_chat_response(body) == resp
    sdk_usage = SDKMessage.model_validate(body).usage
    assert (
        sdk_usage.output_tokens,
        sdk_usage.cache_creation_input_tokens,
        sdk_usage.cache_read_input_tokens,
    ) == (
        resp.usage.output_tokens,
        resp.usage.cache_write_tokens,
        resp.usage.cached_tokens,
    )


@st.composite
def stream_scripts(
    draw: st.DrawFn,
) -> tuple[list[StreamEvent], str, list[ToolCall], FinishReason, Usage | None]:
    """A canonical event sequence, with the text, calls, finish reason and usage it must add up to."""
    events: list[StreamEvent] = [StreamStart(id="msg_x", model="m")]
    text, calls = "", list[ToolCall]()
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            chunk = draw(st.text(max_size=10))
            events.append(TextDelta(chunk))
            text += chunk
            continue
        call = ToolCall(f"toolu_{len(calls)}", draw(NAMES), draw(ARGUMENTS))
        cuts = sorted(draw(st.lists(st.integers(1, len(call.arguments)), max_size=2, unique=True)))
        bounds = [0, *cuts, len(call.arguments)]
        events.append(ToolCallStart(len(calls), call.id, call.name))
        events.extend(ToolCallDelta(len(calls), call.arguments[a:b]) for a, b in itertools.pairwise(bounds))
        calls.append(call)
    reason = draw(st.sampled_from(FINISH_REASONS))
    usage = draw(st.none() | anthropic_usages(10**6))
    tail: list[StreamEvent] = [Finish(reason)] if usage is None else [Finish(reason), UsageReport(usage)]
    events.extend(draw(st.permutations(tail)))
    return events, text, calls, reason, usage


def _reassemble(events: list[StreamEvent]) -> tuple[str, list[ToolCall], list[FinishReason], list[Usage]]:
    text, starts, arguments, reasons, usages = "", {}, {}, [], []
    for event in events:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, ToolCallStart):
            starts[event.index], arguments[event.index] = event, ""
        elif isinstance(event, ToolCallDelta):
            arguments[event.index] += event.arguments
        elif isinstance(event, Finish):
            reasons.append(event.reason)
        elif isinstance(event, UsageReport):
            usages.append(event.usage)
    calls = [ToolCall(starts[i].id, starts[i].name, arguments[i]) for i in sorted(starts)]
    return text, calls, reasons, usages


@settings(deadline=None)
@given(stream_scripts())
def test_rendered_streams_reparse_and_accumulate_to_the_same_answer(script):
    events, text, calls, reason, usage = script
    frames = _decode_frames(_render_all(events))
    assert _reassemble(_feed_all(frames)) == (text, calls, [reason], [usage or Usage()])
    message = _sdk_accumulate(frames)
    assert "".join(b.text for b in message.content if b.type == "text") == text
    assert [(b.id, b.input) for b in message.content if b.type == "tool_use"] == [
        (c.id, orjson.loads(c.arguments)) for c in calls
    ]


ANY_JSON = st.recursive(
    JSON_SCALARS | st.integers(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _corrupt(body: Any, path: tuple[Any, ...], replacement: Any) -> Any:
    if not path:
        return replacement
    body = copy.deepcopy(body)
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = replacement
    return body


@st.composite
def corrupted(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Any:
    """A valid body with one node, anywhere in it, swapped for arbitrary JSON."""
    body = draw(valid)
    return _corrupt(body, draw(st.sampled_from(list(_paths(body)))), draw(ANY_JSON))


def _only_raises(call: Callable[[], object], *allowed: type[Exception]) -> None:
    try:
        call()
    except allowed:
        pass


@settings(deadline=None)
@given(
    ANY_JSON
    | st.dictionaries(st.sampled_from(list(REFERENCE_REQUEST)), ANY_JSON)
    | corrupted(st.just(REFERENCE_REQUEST))
)
def test_arbitrary_json_request_raises_only_invalid_request_error(body):
    _only_raises(lambda: wire.parse_chat_request(body), InvalidRequestError)


@settings(deadline=None)
@given(corrupted(requests().map(wire.build_chat_request)))
def test_corrupted_built_request_raises_only_invalid_request_error(body):
    _only_raises(lambda: wire.parse_chat_request(body), InvalidRequestError)


@settings(deadline=None)
@given(ANY_JSON | corrupted(st.just(REFERENCE_RESPONSE)))
def test_arbitrary_json_reply_raises_only_upstream_connection_error(body):
    _only_raises(lambda: wire.parse_chat_response(body), UpstreamConnectionError)


@settings(deadline=None)
@given(
    st.integers(0, len(REFERENCE_STREAM) - 1).flatmap(
        lambda i: st.tuples(st.just(i), corrupted(st.just(REFERENCE_STREAM[i][1])))
    )
)
def test_corrupted_stream_event_raises_only_upstream_errors(case):
    index, data = case
    parser = wire.StreamParser()

    def feed_all() -> None:
        for name, event in [
            *REFERENCE_STREAM[:index],
            (REFERENCE_STREAM[index][0], data),
            *REFERENCE_STREAM[index + 1 :],
        ]:
            parser.feed(name, event)
        parser.finish()

    _only_raises(feed_all, UpstreamConnectionError, UpstreamStatusError)


# --- Bad input -----------------------------------------------------------------------------------

MISSING = object()


def _minimal_body() -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hello"}],
    }


def _with(**fields: Any) -> dict[str, Any]:
    body = _minimal_body()
    for key, value in fields.items():
        if value is MISSING:
            del body[key]
        else:
            body[key] = value
    return body


def _user(*blocks: Any) -> list[Any]:
    return [{"role": "user", "content": list(blocks)}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_with(model=MISSING), "model"),
        (_with(model=5), "model"),
        (_with(max_tokens=MISSING), "max_tokens"),
        (_with(max_tokens="64"), "max_tokens"),
        (_with(max_tokens=True), "max_tokens"),
        (_with(max_tokens=0), "max_tokens"),
        (_with(messages=MISSING), "messages"),
        (_with(messages="Hello"), "messages"),
        (_with(messages=["Hello"]), "messages[0]"),
        (_with(messages=[{"content": "Hello"}]), "messages[0].role"),
        (_with(messages=[{"role": "tool", "content": "Hello"}]), "messages[0].role"),
        (_with(messages=[{"role": "user"}]), "messages[0].content"),
        (_with(messages=[{"role": "user", "content": 42}]), "messages[0].content"),
        (_with(messages=_user({"type": "text"})), "messages[0].content[0].text"),
        (_with(messages=_user({"text": "hi"})), "messages[0].content[0].type"),
        (_with(messages=_user({"type": "document", "source": {}})), "messages[0].content[0].type"),
        (
            _with(messages=_user({"type": "image", "source": {"type": "file", "file_id": "f"}})),
            "messages[0].content[0].source.type",
        ),
        (
            _with(messages=_user({"type": "image", "source": {"type": "base64", "media_type": "image/png"}})),
            "messages[0].content[0].source.data",
        ),
        (
            _with(messages=_user({"type": "tool_result", "content": "x"})),
            "messages[0].content[0].tool_use_id",
        ),
        (
            _with(messages=_user({"type": "tool_result", "tool_use_id": "t", "content": 3})),
            "messages[0].content[0].content",
        ),
        (
            _with(messages=_user({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"})),
            "messages[0].content[0].is_error",
        ),
        (
            _with(
                messages=[
                    *_user({"type": "text", "text": "q"}),
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}],
                    },
                ]
            ),
            "messages[1].content[0].input",
        ),
        (_with(messages=[{"role": "system", "content": [{"type": "image"}]}]), "messages[0].content[0].type"),
        (_with(temperature="hot"), "temperature"),
        (_with(temperature=True), "temperature"),
        (_with(top_p=[]), "top_p"),
        (_with(stop_sequences="END"), "stop_sequences"),
        (_with(stop_sequences=["END", 3]), "stop_sequences[1]"),
        (_with(stream="yes"), "stream"),
        (_with(system=5), "system"),
        (_with(system=[{"type": "image"}]), "system[0].type"),
        (_with(tools={}), "tools"),
        (_with(tools=[{"name": "f", "input_schema": "x"}]), "tools[0].input_schema"),
        (_with(tools=[{"input_schema": {"type": "object"}}]), "tools[0].name"),
        (_with(tool_choice="auto"), "tool_choice"),
        (_with(tool_choice={"type": "tool"}), "tool_choice.name"),
        (_with(tool_choice={"type": "maybe"}), "tool_choice.type"),
        (
            _with(tool_choice={"type": "auto", "disable_parallel_tool_use": "no"}),
            "tool_choice.disable_parallel_tool_use",
        ),
        (_with(metadata="u"), "metadata"),
        (_with(metadata={"user_id": 5}), "metadata.user_id"),
    ],
)
def test_bad_request_raises_invalid_request_error_naming_the_field(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        wire.parse_chat_request(body)
    assert caught.value.param == param
    assert param in caught.value.message


def test_non_object_body_is_an_invalid_request():
    with pytest.raises(InvalidRequestError):
        wire.parse_chat_request([])  # type: ignore[arg-type]


def test_minimal_valid_request_ignores_unknown_fields():
    req = wire.parse_chat_request(_with(service_tier="auto", container="c1"))
    assert req == ChatRequest(
        model="claude-sonnet-4-5", messages=(Message(role="user", parts=(TextPart("Hello"),)),), max_tokens=64
    )


# --- Thinking and prompt caching -----------------------------------------------------------------

EPHEMERAL = {"type": "ephemeral"}
# A real signature's shape: base64 with padding and slashes, which must survive untouched.
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA/+x==\n"
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"


@pytest.mark.parametrize(
    ("thinking", "reasoning"),
    [
        ({"type": "enabled", "budget_tokens": 2048}, Reasoning(budget_tokens=2048, include_thoughts=True)),
        ({"type": "disabled"}, Reasoning(budget_tokens=0)),
    ],
)
def test_thinking_config_parses_to_reasoning(thinking, reasoning):
    req = wire.parse_chat_request(_with(thinking=thinking, max_tokens=4096))
    assert req.reasoning == reasoning
    assert req.reasoning.enabled is (thinking["type"] == "enabled")


@pytest.mark.parametrize(
    ("thinking", "param"),
    [
        ({"type": "sometimes"}, "thinking.type"),
        ({"type": "enabled"}, "thinking.budget_tokens"),
        ({"type": "enabled", "budget_tokens": "lots"}, "thinking.budget_tokens"),
        ("on", "thinking"),
        ({"type": "enabled", "budget_tokens": 2048}, None),
    ],
)
def test_bad_thinking_config_is_a_400_naming_the_field(thinking, param):
    if param is None:  # the control: a well-formed config parses
        assert wire.parse_chat_request(_with(thinking=thinking)).reasoning is not None
        return
    with pytest.raises(InvalidRequestError) as caught:
        wire.parse_chat_request(_with(thinking=thinking))
    assert caught.value.param == param


def _history_with_thinking() -> dict[str, Any]:
    return _with(
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Call the tool.\n", "signature": SIGNATURE},
                    {"type": "redacted_thinking", "data": REDACTED},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sun"}],
            },
        ],
        thinking={"type": "enabled", "budget_tokens": 2048},
        max_tokens=8000,
    )


def test_history_thinking_and_redacted_thinking_parse_into_message_thinking_byte_for_byte():
    assistant = wire.parse_chat_request(_history_with_thinking()).messages[1]
    assert assistant.thinking == (
        ThinkingPart("Call the tool.\n", SIGNATURE),
        ThinkingPart(redacted_data=REDACTED),
    )
    assert assistant.text == "Checking."


def test_history_thinking_is_built_back_intact_before_text_and_tool_use():
    body = _history_with_thinking()
    built = wire.build_chat_request(wire.parse_chat_request(body))
    assert built["messages"][1] == body["messages"][1]
    assert built["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert built["max_tokens"] == 8000


def test_unsigned_thinking_from_another_provider_is_not_sent_to_anthropic():
    message = Message(role="assistant", parts=(TextPart("Hi"),), thinking=(ThinkingPart("a Gemini thought"),))
    built = wire.build_chat_request(ChatRequest(model="m", messages=(message,)))
    assert built["messages"] == [{"role": "assistant", "content": "Hi"}]


@pytest.mark.parametrize(
    ("reasoning", "max_tokens", "expected_max", "expected_budget"),
    [
        (Reasoning(effort="high"), None, 24576 + 4096, 24576),  # a level becomes its budget
        (Reasoning(budget_tokens=100), 4000, 4000, 1024),  # raised to Anthropic's floor
        (Reasoning(budget_tokens=10_000), 4000, 4000, 3999),  # lowered below max_tokens
        (Reasoning(), None, 8192 + 4096, 8192),  # neither named: medium
    ],
)
def test_reasoning_builds_a_thinking_config_anthropic_accepts(
    reasoning, max_tokens, expected_max, expected_budget
):
    req = ChatRequest(model="m", messages=(), max_tokens=max_tokens, reasoning=reasoning, temperature=0.3)
    built = wire.build_chat_request(req)
    assert built["thinking"] == {"type": "enabled", "budget_tokens": expected_budget}
    assert built["max_tokens"] == expected_max
    assert "temperature" not in built  # Anthropic refuses it beside thinking


def test_reasoning_off_builds_disabled_thinking_and_keeps_temperature():
    req = ChatRequest(model="m", messages=(), reasoning=Reasoning(effort="none"), temperature=0.3)
    built = wire.build_chat_request(req)
    assert built["thinking"] == {"type": "disabled"}
    assert built["temperature"] == 0.3


def test_thinking_with_max_tokens_too_small_for_any_budget_is_refused_naming_max_tokens():
    req = ChatRequest(model="m", messages=(), max_tokens=1000, reasoning=Reasoning(effort="low"))
    with pytest.raises(InvalidRequestError) as caught:
        wire.build_chat_request(req)
    assert caught.value.param == "max_tokens"


def _cached_body() -> dict[str, Any]:
    return _with(
        system=[
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Project notes.", "cache_control": EPHEMERAL},
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.png"},
                        "cache_control": EPHEMERAL,
                    },
                    {"type": "text", "text": "Read it.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Reading."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "read",
                        "input": {"path": "a"},
                        "cache_control": EPHEMERAL,
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "x",
                        "cache_control": EPHEMERAL,
                    }
                ],
            },
        ],
        tools=[
            {"name": "read", "input_schema": {"type": "object"}},
            {"name": "write", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL},
        ],
    )


def test_cache_control_parses_onto_parts_tools_and_tool_messages():
    req = wire.parse_chat_request(_cached_body())
    system, user, assistant, tool = req.messages[1], req.messages[2], req.messages[3], req.messages[4]
    assert system.parts == (TextPart("Project notes.", EPHEMERAL),)
    assert req.messages[0].parts[0].cache_control is None
    assert [p.cache_control for p in user.parts] == [EPHEMERAL, {"type": "ephemeral", "ttl": "1h"}]
    assert assistant.cache_control == EPHEMERAL
    assert tool.cache_control == EPHEMERAL
    assert [t.cache_control for t in req.tools] == [None, EPHEMERAL]


def test_cache_control_is_built_back_unchanged():
    body = _cached_body()
    built = wire.build_chat_request(wire.parse_chat_request(body))
    assert built["system"] == body["system"]
    assert built["messages"] == body["messages"]
    assert built["tools"] == body["tools"]


def test_system_without_cache_control_is_still_built_as_a_string():
    built = wire.build_chat_request(
        wire.parse_chat_request(_with(system=[{"type": "text", "text": "Terse."}]))
    )
    assert built["system"] == "Terse."


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_with(system=[{"type": "text", "text": "s", "cache_control": "yes"}]), "system[0].cache_control"),
        (
            _with(messages=_user({"type": "text", "text": "t", "cache_control": 1})),
            "messages[0].content[0].cache_control",
        ),
        (_with(tools=[{"name": "t", "input_schema": {}, "cache_control": []}]), "tools[0].cache_control"),
    ],
)
def test_bad_cache_control_is_a_400_naming_the_field(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        wire.parse_chat_request(body)
    assert caught.value.param == param


def test_response_with_thinking_renders_thinking_blocks_first_for_the_sdk():
    response = ChatResponse(
        id="msg_1",
        model="claude",
        message=Message(
            role="assistant",
            parts=(TextPart("Sunny."),),
            thinking=(ThinkingPart("Look outside.", SIGNATURE), ThinkingPart(redacted_data=REDACTED)),
        ),
        finish_reason="stop",
        usage=Usage(input_tokens=120, output_tokens=9, cached_tokens=100, cache_write_tokens=15),
    )
    rendered = wire.render_chat_response(response)
    assert rendered["content"] == [
        {"type": "thinking", "thinking": "Look outside.", "signature": SIGNATURE},
        {"type": "redacted_thinking", "data": REDACTED},
        {"type": "text", "text": "Sunny."},
    ]
    assert rendered["usage"] == {
        "input_tokens": 5,
        "cache_creation_input_tokens": 15,
        "cache_read_input_tokens": 100,
        "output_tokens": 9,
    }
    SDKMessage.model_validate(rendered)
    assert wire.parse_chat_response(rendered) == response


def test_stream_parses_redacted_thinking_and_refuses_a_thinking_delta_outside_thinking():
    events = [
        REFERENCE_STREAM[0],
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "redacted_thinking", "data": REDACTED},
            },
        ),
        _block_stop(0),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert _feed_all(events)[1] == ThinkingDelta(0, redacted_data=REDACTED)
    parser = wire.StreamParser()
    parser.feed("message_start", REFERENCE_STREAM[0][1])
    with pytest.raises(UpstreamConnectionError):
        parser.feed(*_block_delta(3, {"type": "thinking_delta", "thinking": "x"}))


def test_thinking_stream_renders_blocks_the_sdk_accumulates_with_signature_intact():
    events: list[StreamEvent] = [
        StreamStart("msg_1", "claude-sonnet"),
        ThinkingDelta(0, "Let me "),
        ThinkingDelta(0, "think."),
        ThinkingDelta(0, signature=SIGNATURE),
        ThinkingDelta(1, redacted_data=REDACTED),
        TextDelta("Done."),
        ToolCallStart(0, "toolu_1", "get_weather"),
        ToolCallDelta(0, '{"city":"Oslo"}'),
        Finish("tool_calls"),
        UsageReport(Usage(input_tokens=50, output_tokens=20, cached_tokens=40, cache_write_tokens=5)),
    ]
    frames = _decode_frames(_render_all(events))
    message = _sdk_accumulate(frames)
    assert [block.type for block in message.content] == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert message.content[0].thinking == "Let me think."
    assert message.content[0].signature == SIGNATURE
    assert message.content[1].data == REDACTED
    assert message.usage.cache_read_input_tokens == 40
    assert message.usage.cache_creation_input_tokens == 5
    assert message.usage.input_tokens == 5
    # and the gateway's own parser reads its rendering back to the same events
    assert _feed_all(frames) == events
