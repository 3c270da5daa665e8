"""The Gemini codec: golden wire examples, streams, round-trip properties, bad input and SDK acceptance."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.genai import types as genai_types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
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
    ThinkingPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    Usage,
    UsageReport,
)
from ferryman.errors import InvalidRequestError, UpstreamConnectionError
from ferryman.wire import gemini as wire

GOLDEN = Path(__file__).parent / "golden" / "gemini"
SIGNATURE = "CiIBVKhc7oDKxp+/Uq2hJ3Sd1vIwV3z+bA=="
SIGNED_ID = "__thought__CiIBVKhc7oDKxp-_Uq2hJ3Sd1vIwV3z-bA"  # the same signature, base64url, unpadded
WEATHER_SCHEMA: Any = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}


def load(name: str) -> Any:
    return orjson.loads((GOLDEN / name).read_bytes())


def build(req: ChatRequest) -> Any:
    """The built body, typed loosely so tests can index into it."""
    return wire.build_chat_request(req)


def render(resp: ChatResponse) -> Any:
    """The rendered reply, typed loosely so tests can index into it."""
    return wire.render_chat_response(resp)


def sse_payloads(raw: bytes) -> list[Any]:
    """Split SSE bytes (LF or CRLF framed) into decoded `data:` payloads, as the transport does."""
    frames = raw.replace(b"\r\n", b"\n").split(b"\n\n")
    assert frames[-1] == b"", "every frame must end with a blank line"
    payloads = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: "), frame
        payloads.append(orjson.loads(frame[len(b"data: ") :]))
    return payloads


def feed_all(payloads: list[Any]) -> list[StreamEvent]:
    parser = wire.StreamParser()
    events: list[StreamEvent] = []
    for payload in payloads:
        events.extend(parser.feed(None, payload))
    return events + parser.finish()


def render_all(events: list[StreamEvent], model: str = "gemini-flash") -> bytes:
    renderer = wire.StreamRenderer(model)
    return b"".join(renderer.render(event) for event in events) + renderer.close()


# --- 1. Golden requests ----------------------------------------------------------------------------


def test_api_reference_request_parses_to_exact_canonical_request():
    req = wire.parse_chat_request(load("request_multiturn_tools.json"), model="gemini-2.5-flash", stream=True)

    paris_id = "call_0" + SIGNED_ID
    assert req == ChatRequest(
        model="gemini-2.5-flash",
        messages=(
            Message(role="system", parts=(TextPart("You are a concise travel assistant."),)),
            Message(
                role="user",
                parts=(
                    TextPart("What is the weather where this photo was taken, and in Boston?"),
                    ImagePart("data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ=="),
                    ImagePart("https://example.com/photos/eiffel.png"),
                ),
            ),
            Message(
                role="assistant",
                parts=(TextPart("Let me check both places."),),
                tool_calls=(
                    ToolCall(id=paris_id, name="get_current_weather", arguments='{"location":"Paris, FR"}'),
                    ToolCall(id="call_1", name="get_current_weather", arguments='{"location":"Boston, MA"}'),
                ),
            ),
            Message(
                role="tool",
                parts=(TextPart('{"temperature":18,"unit":"celsius"}'),),
                tool_call_id=paris_id,
                name="get_current_weather",
            ),
            Message(
                role="tool",
                parts=(TextPart("rain, 9 degrees"),),
                tool_call_id="call_1",
                name="get_current_weather",
            ),
            Message(
                role="assistant",
                parts=(TextPart("Paris is 18°C; Boston has rain at 9°C."),),
                thinking=(ThinkingPart("Hmm, let me think."),),
            ),
            Message(role="user", parts=(TextPart("Book the warmer one."),)),
        ),
        max_tokens=1024,
        temperature=0.4,
        top_p=0.95,
        stop=("\n\nUser:",),
        tools=(
            Tool(
                name="get_current_weather",
                description="Get the current weather in a given location",
                parameters=WEATHER_SCHEMA,
            ),
            Tool(
                name="book_trip",
                parameters={
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "additionalProperties": False,
                },
            ),
        ),
        tool_choice=ToolChoice(mode="required", name="book_trip"),
        response_format=ResponseFormat(
            type="json_schema", schema={"type": "object", "properties": {"city": {"type": "string"}}}
        ),
        stream=True,
        seed=7,
        reasoning=Reasoning(budget_tokens=0),
    )


def test_request_as_the_python_sdk_sends_it_with_snake_case_fields_parses():
    req = wire.parse_chat_request(load("request_sdk_snake_case.json"), model="m", stream=False)

    assert req.messages == (
        Message(role="system", parts=(TextPart("be nice"),)),
        Message(
            role="user",
            parts=(
                TextPart("hello"),
                ImagePart("data:image/png;base64,iVBORw=="),
                ImagePart("https://x.example/y.jpg"),
            ),
        ),
        Message(
            role="assistant",
            tool_calls=(ToolCall(id="c1", name="get_weather", arguments='{"city":"Paris"}'),),
        ),
        Message(role="tool", parts=(TextPart('{"temp":20}'),), tool_call_id="c1", name="get_weather"),
    )
    assert req.tools == (
        Tool(
            name="get_weather",
            description="Get weather",
            parameters={"type": "object", "properties": {"city": {"type": "string"}}},
        ),
        Tool(
            name="f",
            parameters={
                "properties": {
                    "a": {"items": {"type": "string"}, "maxItems": 3, "type": ["array", "null"]},
                    "b": {"anyOf": [{"type": "integer"}]},
                },
                "propertyOrdering": ["a", "b"],
                "required": ["a"],
                "type": "object",
            },
        ),
    )
    assert req.tool_choice == ToolChoice(mode="required", name="get_weather")
    assert req.response_format == ResponseFormat(
        type="json_schema", schema={"properties": {"x": {"type": "string"}}, "type": "object"}
    )
    assert (req.temperature, req.top_p, req.max_tokens, req.stop, req.seed) == (0.5, 0.9, 100, ("END",), 4)


def test_snake_case_spelling_of_every_top_level_field_is_accepted():
    body: Any = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "system_instruction": {"parts": [{"text": "sys"}]},
        "tool_config": {"function_calling_config": {"mode": "NONE"}},
        "generation_config": {
            "max_output_tokens": 5,
            "top_p": 0.5,
            "stop_sequences": ["x"],
            "response_mime_type": "application/json",
        },
        "tools": [{"function_declarations": [{"name": "f"}]}],
    }

    req = wire.parse_chat_request(body, model="m", stream=False)

    assert req.messages[0] == Message(role="system", parts=(TextPart("sys"),))
    assert req.tool_choice == ToolChoice(mode="none")
    assert (req.max_tokens, req.top_p, req.stop) == (5, 0.5, ("x",))
    assert req.response_format == ResponseFormat(type="json_object")
    assert req.tools == (Tool(name="f"),)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"mode": "AUTO"}, ToolChoice(mode="auto")),
        ({"mode": "VALIDATED"}, ToolChoice(mode="auto")),
        ({"mode": "NONE"}, ToolChoice(mode="none")),
        ({"mode": "ANY"}, ToolChoice(mode="required")),
        ({"mode": "ANY", "allowedFunctionNames": ["a", "b"]}, ToolChoice(mode="required")),
        ({"mode": "MODE_UNSPECIFIED"}, None),
    ],
)
def test_function_calling_modes_map_to_tool_choice(config, expected):
    body: Any = {"contents": [{"parts": [{"text": "hi"}]}], "toolConfig": {"functionCallingConfig": config}}

    assert wire.parse_chat_request(body, model="m", stream=False).tool_choice == expected


def test_content_without_role_is_a_user_turn_and_text_only_mime_type_is_text_format():
    body: Any = {
        "contents": [{"parts": [{"text": "hi"}]}],
        "generationConfig": {"responseMimeType": "text/plain"},
    }

    req = wire.parse_chat_request(body, model="m", stream=False)

    assert req.messages == (Message(role="user", parts=(TextPart("hi"),)),)
    assert req.response_format == ResponseFormat(type="text")


def test_function_responses_without_ids_answer_calls_of_the_same_name_in_order():
    body: Any = {
        "contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {
                "role": "model",
                "parts": [
                    {"functionCall": {"name": "a", "args": {}}},
                    {"functionCall": {"name": "b"}},
                    {"functionCall": {"name": "a", "args": {"n": 2}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "b", "response": {"error": "boom"}}},
                    {"functionResponse": {"name": "a", "response": {"output": "one"}}},
                    {"functionResponse": {"name": "a", "response": {"result": "two"}}},
                    {"text": "thanks"},
                ],
            },
        ]
    }

    messages = wire.parse_chat_request(body, model="m", stream=False).messages

    assert [call.id for call in messages[1].tool_calls] == ["call_0", "call_1", "call_2"]
    assert messages[1].tool_calls[1].arguments == "{}"
    assert messages[2:] == (
        Message(role="tool", parts=(TextPart("boom"),), tool_call_id="call_1", name="b", is_error=True),
        Message(role="tool", parts=(TextPart("one"),), tool_call_id="call_0", name="a"),
        Message(role="tool", parts=(TextPart("two"),), tool_call_id="call_2", name="a"),
        Message(role="user", parts=(TextPart("thanks"),)),
    )


# --- 1b. Golden builds -----------------------------------------------------------------------------


def openai_style_request(model: str = "gemini-2.5-flash") -> ChatRequest:
    """A request as the OpenAI codec produces it: tool messages carry no function name."""
    return ChatRequest(
        model=model,
        messages=(
            Message(role="system", parts=(TextPart("Be brief."),)),
            Message(role="system", parts=(TextPart("Answer in English."),)),
            Message(
                role="user",
                parts=(
                    TextPart("Weather here and in Boston?"),
                    ImagePart("data:image/png;base64,iVBORw0KGgo=", detail="high"),
                    ImagePart("https://example.com/a/photo.WEBP?size=large"),
                    ImagePart("https://example.com/no-extension"),
                ),
            ),
            Message(
                role="assistant",
                tool_calls=(
                    ToolCall(id="call_abc", name="get_current_weather", arguments='{"location": "Paris"}'),
                    ToolCall(id="call_def", name="get_current_weather", arguments=""),
                ),
            ),
            Message(role="tool", parts=(TextPart('{"temp": 18}'),), tool_call_id="call_abc"),
            Message(role="tool", parts=(TextPart("rain"),), tool_call_id="call_def"),
            Message(role="system", parts=(TextPart("Mention units."),)),
            Message(role="assistant", parts=(TextPart("Paris 18, Boston rain."),)),
            Message(role="user", parts=(TextPart("Thanks"),)),
        ),
        max_tokens=256,
        temperature=0.7,
        top_p=1.0,
        stop=("END", "STOP"),
        tools=(Tool(name="get_current_weather", description="Weather", parameters=WEATHER_SCHEMA),),
        tool_choice=ToolChoice(mode="auto"),
        parallel_tool_calls=True,
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}, name="x", strict=True),
        stream=True,
        user="user-1",
        seed=3,
    )


def test_canonical_request_builds_the_exact_gemini_body():
    body = build(openai_style_request())

    assert body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in English."}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "Weather here and in Boston?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    {
                        "fileData": {
                            "mimeType": "image/webp",
                            "fileUri": "https://example.com/a/photo.WEBP?size=large",
                        }
                    },
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/no-extension"}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {
                            "id": "call_abc",
                            "name": "get_current_weather",
                            "args": {"location": "Paris"},
                        }
                    },
                    {"functionCall": {"id": "call_def", "name": "get_current_weather", "args": {}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "id": "call_abc",
                            "name": "get_current_weather",
                            "response": {"temp": 18},
                        }
                    },
                    {
                        "functionResponse": {
                            "id": "call_def",
                            "name": "get_current_weather",
                            "response": {"result": "rain"},
                        }
                    },
                    {"text": "Mention units."},
                ],
            },
            {"role": "model", "parts": [{"text": "Paris 18, Boston rain."}]},
            {"role": "user", "parts": [{"text": "Thanks"}]},
        ],
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_current_weather",
                        "description": "Weather",
                        "parametersJsonSchema": WEATHER_SCHEMA,
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "generationConfig": {
            "temperature": 0.7,
            "topP": 1.0,
            "maxOutputTokens": 256,
            "stopSequences": ["END", "STOP"],
            "seed": 3,
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
        },
    }


def test_build_puts_no_model_or_stream_flag_in_the_body():
    body = build(openai_style_request())

    assert "model" not in body
    assert "stream" not in body
    assert "model" not in body["generationConfig"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (ToolChoice(mode="none"), {"mode": "NONE"}),
        (ToolChoice(mode="required"), {"mode": "ANY"}),
        (ToolChoice(mode="required", name="f"), {"mode": "ANY", "allowedFunctionNames": ["f"]}),
    ],
)
def test_tool_choice_builds_function_calling_config(choice, expected):
    req = ChatRequest(model="m", messages=(Message(role="user", parts=(TextPart("x"),)),), tool_choice=choice)

    assert build(req)["toolConfig"] == {"functionCallingConfig": expected}


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (ResponseFormat(type="json_object"), {"responseMimeType": "application/json"}),
        (ResponseFormat(type="text"), {"responseMimeType": "text/plain"}),
    ],
)
def test_response_format_builds_mime_type(response_format, expected):
    req = ChatRequest(
        model="m", messages=(Message(role="user", parts=(TextPart("x"),)),), response_format=response_format
    )

    assert build(req)["generationConfig"] == expected


def test_tool_results_are_objects_wrapped_only_when_they_are_not_json_objects():
    def response_for(text: str, is_error: bool = False) -> Any:
        req = ChatRequest(
            model="m",
            messages=(
                Message(role="assistant", tool_calls=(ToolCall(id="c", name="f", arguments="{}"),)),
                Message(role="tool", parts=(TextPart(text),), tool_call_id="c", is_error=is_error),
            ),
        )
        return build(req)["contents"][1]["parts"][0]["functionResponse"]["response"]

    assert response_for('{"a": [1, 2]}') == {"a": [1, 2]}
    assert response_for("[1, 2]") == {"result": "[1, 2]"}
    assert response_for("plain") == {"result": "plain"}
    assert response_for('{"result": "looks wrapped"}') == {"result": '{"result": "looks wrapped"}'}
    assert response_for('{"a": 1}', is_error=True) == {"error": '{"a": 1}'}


def test_tool_message_answering_no_known_call_is_refused_with_its_param():
    req = ChatRequest(
        model="m",
        messages=(
            Message(role="user", parts=(TextPart("x"),)),
            Message(role="tool", parts=(TextPart("r"),), tool_call_id="ghost"),
        ),
    )

    with pytest.raises(InvalidRequestError) as caught:
        build(req)

    assert caught.value.param == "messages[1].tool_call_id"


def test_tool_call_name_is_looked_up_from_the_latest_call_with_that_id():
    req = ChatRequest(
        model="m",
        messages=(
            Message(role="assistant", tool_calls=(ToolCall(id="call_0", name="old", arguments="{}"),)),
            Message(role="tool", parts=(TextPart("1"),), tool_call_id="call_0"),
            Message(role="assistant", tool_calls=(ToolCall(id="call_0", name="new", arguments="{}"),)),
            Message(role="tool", parts=(TextPart("2"),), tool_call_id="call_0"),
        ),
    )

    contents = build(req)["contents"]

    assert contents[1]["parts"][0]["functionResponse"]["name"] == "old"
    assert contents[3]["parts"][0]["functionResponse"]["name"] == "new"


def test_unparseable_tool_arguments_are_kept_wrapped_in_an_object():
    req = ChatRequest(
        model="m",
        messages=(Message(role="assistant", tool_calls=(ToolCall(id="c", name="f", arguments="{oops"),)),),
    )

    part = build(req)["contents"][0]["parts"][0]

    assert part["functionCall"]["args"] == {"arguments": "{oops"}


def test_images_in_a_tool_result_travel_beside_the_function_response():
    req = ChatRequest(
        model="m",
        messages=(
            Message(role="assistant", tool_calls=(ToolCall(id="c", name="shot", arguments="{}"),)),
            Message(
                role="tool",
                parts=(TextPart("see image"), ImagePart("data:image/gif;base64,R0lG")),
                tool_call_id="c",
                name="shot",
            ),
        ),
    )

    parts = build(req)["contents"][1]["parts"]

    assert parts == [
        {"functionResponse": {"id": "c", "name": "shot", "response": {"result": "see image"}}},
        {"inlineData": {"mimeType": "image/gif", "data": "R0lG"}},
    ]


def test_thought_signature_carried_in_the_id_is_restored_when_building():
    req = ChatRequest(
        model="gemini-2.5-pro",
        messages=(
            Message(
                role="assistant",
                tool_calls=(
                    ToolCall(id="call_0" + SIGNED_ID, name="f", arguments="{}"),
                    ToolCall(id="call_1", name="f", arguments="{}"),
                ),
            ),
            Message(role="tool", parts=(TextPart("ok"),), tool_call_id="call_0" + SIGNED_ID),
        ),
    )

    contents = build(req)["contents"]

    assert contents[0]["parts"] == [
        {"functionCall": {"id": "call_0", "name": "f", "args": {}}, "thoughtSignature": SIGNATURE},
        {"functionCall": {"id": "call_1", "name": "f", "args": {}}},
    ]
    assert contents[1]["parts"][0]["functionResponse"]["id"] == "call_0"


@pytest.mark.parametrize(
    ("model", "signed"),
    [
        ("gemini-3-pro-preview", True),
        ("gemini-3.1-flash", True),
        ("gemini-2.5-flash", False),
        ("gpt-4o", False),
    ],
)
def test_gemini_3_turns_without_a_signature_get_the_documented_placeholder(model, signed):
    req = ChatRequest(
        model=model,
        messages=(
            Message(role="user", parts=(TextPart("go"),)),
            Message(
                role="assistant",
                tool_calls=(
                    ToolCall(id="a", name="f", arguments="{}"),
                    ToolCall(id="b", name="f", arguments="{}"),
                ),
            ),
        ),
    )

    parts = build(req)["contents"][1]["parts"]

    assert ("thoughtSignature" in parts[0]) is signed
    assert parts[0].get("thoughtSignature", wire.PLACEHOLDER_SIGNATURE) == wire.PLACEHOLDER_SIGNATURE
    assert "thoughtSignature" not in parts[1]  # parallel calls: only the first carries one


def test_placeholder_signature_is_not_folded_into_the_parsed_id():
    body: Any = {
        "contents": [
            {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {"id": "a", "name": "f", "args": {}},
                        "thoughtSignature": wire.PLACEHOLDER_SIGNATURE,
                    }
                ],
            }
        ]
    }

    req = wire.parse_chat_request(body, model="m", stream=False)

    assert req.messages[0].tool_calls[0].id == "a"


def test_empty_messages_are_dropped_because_gemini_refuses_contents_without_parts():
    req = ChatRequest(
        model="m",
        messages=(
            Message(role="user", parts=(TextPart("hi"),)),
            Message(role="assistant", parts=(TextPart(""),)),
            Message(role="user", parts=(TextPart("again"),)),
        ),
    )

    assert build(req)["contents"] == [{"role": "user", "parts": [{"text": "hi"}, {"text": "again"}]}]


def test_system_only_conversation_becomes_a_user_turn_because_gemini_needs_contents() -> None:
    req = ChatRequest(model="m", messages=(Message(role="system", parts=(TextPart("Say hi."),)),))

    assert build(req) == {"contents": [{"role": "user", "parts": [{"text": "Say hi."}]}]}


# --- 1c. Golden responses --------------------------------------------------------------------------


def test_text_response_with_thoughts_and_cached_tokens_parses_exactly():
    resp = wire.parse_chat_response(load("response_text_cached.json"))

    assert resp == ChatResponse(
        id="Yo1raNXyDsCqkdUPhoXi-QQ",
        model="gemini-2.5-flash",
        message=Message(
            role="assistant",
            parts=(
                TextPart("The sky is blue because air molecules scatter "),
                TextPart("short wavelengths more than long ones.", signature="Cv4BAdHtim8="),
            ),
            thinking=(ThinkingPart("**Considering the sky**\n\nRayleigh scattering..."),),
        ),
        finish_reason="stop",
        usage=Usage(input_tokens=2048, output_tokens=57, cached_tokens=1536, reasoning_tokens=40),
    )


def test_parallel_function_calls_parse_with_numbered_ids_and_tool_calls_finish():
    resp = wire.parse_chat_response(load("response_parallel_calls.json"))

    assert resp == ChatResponse(
        id="k3BnaN2bEc2_kdUP7fKzwQc",
        model="gemini-2.5-flash",
        message=Message(
            role="assistant",
            tool_calls=(
                ToolCall(
                    id="call_0" + SIGNED_ID, name="get_current_weather", arguments='{"location":"Boston, MA"}'
                ),
                ToolCall(
                    id="call_1", name="get_current_weather", arguments='{"location":"San Francisco, CA"}'
                ),
            ),
        ),
        finish_reason="tool_calls",
        usage=Usage(input_tokens=68, output_tokens=24),
    )


@pytest.mark.parametrize(
    ("name", "finish", "message"),
    [
        (
            "response_max_tokens.json",
            "length",
            Message(role="assistant", parts=(TextPart("Once upon a time, in a"),)),
        ),
        ("response_safety.json", "content_filter", Message(role="assistant")),
        ("response_prompt_blocked.json", "content_filter", Message(role="assistant")),
    ],
)
def test_stop_reasons_parse_to_canonical_finish(name, finish, message):
    resp = wire.parse_chat_response(load(name))

    assert (resp.finish_reason, resp.message) == (finish, message)


@pytest.mark.parametrize(
    ("gemini", "canonical"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "error"),
        ("OTHER", "error"),
        ("SOMETHING_NEW", "stop"),
    ],
)
def test_every_documented_finish_reason_maps(gemini, canonical):
    body: Any = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": gemini}]
    }

    assert wire.parse_chat_response(body).finish_reason == canonical


def test_tool_use_prompt_tokens_count_as_input_and_missing_response_id_is_generated():
    body: Any = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 10, "toolUsePromptTokenCount": 5, "candidatesTokenCount": 2},
    }

    resp = wire.parse_chat_response(body)

    assert resp.usage == Usage(input_tokens=15, output_tokens=2)
    assert resp.id.startswith("gemini-")
    assert resp.id != wire.parse_chat_response(body).id


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"candidates": "x"},
        {"candidates": [1]},
        {"candidates": [{"content": []}]},
        {"candidates": [{"content": {"parts": {}}}]},
        {"candidates": [{"content": {"parts": [{"text": 1}]}}]},
        {"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]},
        {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": []}}]}}]},
        {"candidates": [{"content": {"parts": [{"functionResponse": {"name": "f"}}]}}]},
        {"candidates": [{"finishReason": 3}]},
        {"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": "9"}},
        {"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": -1}},
        {"candidates": [{"finishReason": "STOP"}], "responseId": 5},
    ],
)
def test_malformed_upstream_reply_is_an_upstream_connection_error(body):
    with pytest.raises(UpstreamConnectionError) as caught:
        wire.parse_chat_response(body)

    assert caught.value.provider == "gemini"


# --- 1d. Rendering for Gemini clients, checked by the official SDK ---------------------------------


def test_canonical_response_renders_exact_json_the_sdk_reads():
    resp = ChatResponse(
        id="chatcmpl-123",
        model="gemini-flash",
        message=Message(
            role="assistant",
            parts=(TextPart("Checking."),),
            tool_calls=(
                ToolCall(id="call_a", name="get_weather", arguments='{"city": "Paris"}'),
                ToolCall(id="toolu_b" + SIGNED_ID, name="get_weather", arguments='{"city":"Rome"}'),
            ),
        ),
        finish_reason="tool_calls",
        usage=Usage(input_tokens=30, output_tokens=12, cached_tokens=10),
        created=1700000000,
    )

    rendered = render(resp)

    assert rendered == {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Checking."},
                        {"functionCall": {"id": "call_a", "name": "get_weather", "args": {"city": "Paris"}}},
                        {
                            "functionCall": {
                                "id": "toolu_b",
                                "name": "get_weather",
                                "args": {"city": "Rome"},
                            },
                            "thoughtSignature": SIGNATURE,
                        },
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 30,
            "candidatesTokenCount": 12,
            "totalTokenCount": 42,
            "cachedContentTokenCount": 10,
        },
        "modelVersion": "gemini-flash",
        "responseId": "chatcmpl-123",
    }
    sdk = genai_types.GenerateContentResponse.model_validate(rendered)
    assert [(c.id, c.name, c.args) for c in sdk.function_calls or []] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("toolu_b", "get_weather", {"city": "Rome"}),
    ]
    assert sdk.usage_metadata is not None
    assert sdk.usage_metadata.cached_content_token_count == 10
    assert sdk.response_id == "chatcmpl-123"


def _answer(usage: Usage) -> ChatResponse:
    return ChatResponse(
        id="r",
        model="m",
        message=Message(role="assistant", parts=(TextPart("ok"),)),
        finish_reason="stop",
        usage=usage,
    )


def test_reasoning_renders_as_thoughts_apart_from_the_candidates_and_parses_back():
    usage = Usage(input_tokens=2048, output_tokens=57, cached_tokens=1536, reasoning_tokens=40)
    rendered = render(_answer(usage))

    assert rendered["usageMetadata"] == {
        "promptTokenCount": 2048,
        "candidatesTokenCount": 17,
        "totalTokenCount": 2105,
        "cachedContentTokenCount": 1536,
        "thoughtsTokenCount": 40,
    }
    sdk = genai_types.GenerateContentResponse.model_validate(rendered).usage_metadata
    assert sdk is not None
    assert (sdk.candidates_token_count, sdk.thoughts_token_count, sdk.cached_content_token_count) == (
        17,
        40,
        1536,
    )
    assert wire.parse_chat_response(rendered).usage == usage


def test_cache_writes_have_no_gemini_field_and_stay_inside_the_prompt_count():
    # From an Anthropic upstream: Gemini reports no writes, so they are input like any other.
    rendered = render(
        _answer(Usage(input_tokens=3000, output_tokens=5, cached_tokens=1000, cache_write_tokens=1900))
    )
    assert rendered["usageMetadata"] == {
        "promptTokenCount": 3000,
        "candidatesTokenCount": 5,
        "totalTokenCount": 3005,
        "cachedContentTokenCount": 1000,
    }
    assert wire.parse_chat_response(rendered).usage == Usage(3000, 5, cached_tokens=1000)


def test_more_reasoning_than_output_renders_no_negative_candidates():
    rendered = render(_answer(Usage(input_tokens=1, output_tokens=3, reasoning_tokens=5)))
    assert rendered["usageMetadata"]["candidatesTokenCount"] == 0


@pytest.mark.parametrize(
    ("finish", "gemini"),
    [("stop", "STOP"), ("length", "MAX_TOKENS"), ("content_filter", "SAFETY"), ("error", "OTHER")],
)
def test_rendered_text_answers_are_read_by_the_sdk(finish: FinishReason, gemini: str) -> None:
    resp = ChatResponse(
        id="r",
        model="m",
        message=Message(role="assistant", parts=(TextPart("Hello "), TextPart("world"))),
        finish_reason=finish,
        usage=Usage(1, 2),
    )

    sdk = genai_types.GenerateContentResponse.model_validate(render(resp))

    assert sdk.text == "Hello world"
    assert sdk.candidates is not None
    assert sdk.candidates[0].finish_reason == gemini


def test_empty_answer_renders_a_content_without_parts_the_sdk_accepts():
    resp = ChatResponse(
        id="r", model="m", message=Message(role="assistant"), finish_reason="content_filter", usage=Usage()
    )

    rendered = render(resp)
    sdk = genai_types.GenerateContentResponse.model_validate(rendered)

    assert rendered["candidates"][0]["content"] == {"role": "model"}
    assert sdk.text is None


# --- 2. Streams ------------------------------------------------------------------------------------


def test_text_stream_parses_to_exact_events_with_usage_from_the_last_chunk():
    events = feed_all(sse_payloads((GOLDEN / "stream_text.sse").read_bytes()))

    assert events == [
        StreamStart(id="Yo1raNXyDsCqkdUPhoXi-QQ", model="gemini-2.5-flash"),
        TextDelta("The sky"),
        TextDelta(" is blue because of Rayleigh scattering."),
        TextDelta("", signature="Cv4BAdHtim8="),  # Gemini seals the answer in its last chunk
        Finish("stop"),
        UsageReport(Usage(input_tokens=9, output_tokens=35, cached_tokens=4, reasoning_tokens=25)),
    ]


def test_tool_call_stream_parses_whole_calls_and_parallel_calls_in_order():
    events = feed_all(sse_payloads((GOLDEN / "stream_tool_calls.sse").read_bytes()))

    assert events == [
        StreamStart(id="k3BnaN2bEc2_kdUP7fKzwQc", model="gemini-2.5-flash"),
        TextDelta("Checking both cities"),
        ToolCallStart(index=0, id="call_0" + SIGNED_ID, name="get_current_weather"),
        ToolCallDelta(index=0, arguments='{"location":"Boston, MA"}'),
        ToolCallStart(index=1, id="call_1", name="get_current_weather"),
        ToolCallDelta(index=1, arguments='{"location":"San Francisco, CA","unit":"celsius"}'),
        ToolCallStart(index=2, id="fc_3", name="book_trip"),
        ToolCallDelta(index=2, arguments='{"city":"Boston"}'),
        Finish("tool_calls"),
        UsageReport(Usage(input_tokens=70, output_tokens=41)),
    ]


def test_stream_without_finish_reason_is_finished_by_finish_with_the_last_usage():
    parser = wire.StreamParser()
    chunk: Any = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1},
        "responseId": "r",
    }

    first = parser.feed(None, chunk)
    last = parser.finish()

    assert first == [StreamStart(id="r", model=""), TextDelta("hi")]
    assert last == [Finish("stop"), UsageReport(Usage(3, 1))]


def test_usage_arriving_after_the_finish_reason_is_reported_once():
    parser = wire.StreamParser()
    finished: Any = {
        "candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"}],
        "responseId": "r",
    }
    usage_only: Any = {"usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2}}

    events = parser.feed(None, finished) + parser.feed(None, usage_only) + parser.feed(None, usage_only)

    assert events == [StreamStart(id="r", model=""), TextDelta("a"), Finish("stop"), UsageReport(Usage(4, 2))]
    assert parser.finish() == []


def test_blocked_prompt_stream_finishes_with_content_filter():
    chunk: Any = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 8},
        "responseId": "b",
    }

    assert feed_all([chunk]) == [
        StreamStart(id="b", model=""),
        Finish("content_filter"),
        UsageReport(Usage(input_tokens=8)),
    ]


def test_error_chunk_and_empty_stream_are_upstream_connection_errors():
    with pytest.raises(UpstreamConnectionError, match="quota"):
        wire.StreamParser().feed(None, {"error": {"code": 429, "message": "quota exhausted"}})
    with pytest.raises(UpstreamConnectionError):
        wire.StreamParser().finish()
    with pytest.raises(UpstreamConnectionError):
        wire.StreamParser().feed(None, {"candidates": [{"content": {"parts": [{"text": 5}]}}]})


CANONICAL_STREAM: list[StreamEvent] = [
    StreamStart(id="chatcmpl-9", model="gpt-4o"),
    TextDelta("Let me "),
    TextDelta("check."),
    ToolCallStart(index=0, id="call_a", name="get_weather"),
    ToolCallDelta(index=0, arguments='{"city"'),
    ToolCallDelta(index=0, arguments=': "Paris"}'),
    ToolCallStart(index=1, id="call_b", name="get_weather"),
    ToolCallDelta(index=1, arguments='{"city": "Rome"}'),
    Finish("tool_calls"),
    UsageReport(Usage(input_tokens=20, output_tokens=9, cached_tokens=4)),
]


def test_renderer_emits_exact_frames_with_tool_calls_finish_and_usage_last():
    frames = sse_payloads(render_all(CANONICAL_STREAM))

    header = {"modelVersion": "gemini-flash", "responseId": "chatcmpl-9"}
    assert frames == [
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Let me "}]}, "index": 0}],
            **header,
        },
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "check."}]}, "index": 0}], **header},
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {
                                "functionCall": {
                                    "id": "call_a",
                                    "name": "get_weather",
                                    "args": {"city": "Paris"},
                                }
                            },
                            {
                                "functionCall": {
                                    "id": "call_b",
                                    "name": "get_weather",
                                    "args": {"city": "Rome"},
                                }
                            },
                        ],
                    },
                    "index": 0,
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 20,
                "candidatesTokenCount": 9,
                "totalTokenCount": 29,
                "cachedContentTokenCount": 4,
            },
            **header,
        },
    ]


def test_rendered_frames_are_read_by_the_sdk_and_parse_back_to_the_same_stream():
    raw = render_all(CANONICAL_STREAM)
    chunks = [genai_types.GenerateContentResponse.model_validate(p) for p in sse_payloads(raw)]

    assert "".join(c.text or "" for c in chunks[:-1]) == "Let me check."
    assert [(c.name, c.args) for c in chunks[-1].function_calls or []] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]
    assert feed_all(sse_payloads(raw)) == [
        StreamStart(id="chatcmpl-9", model="gemini-flash"),
        TextDelta("Let me "),
        TextDelta("check."),
        ToolCallStart(index=0, id="call_a", name="get_weather"),
        ToolCallDelta(index=0, arguments='{"city":"Paris"}'),
        ToolCallStart(index=1, id="call_b", name="get_weather"),
        ToolCallDelta(index=1, arguments='{"city":"Rome"}'),
        Finish("tool_calls"),
        UsageReport(Usage(input_tokens=20, output_tokens=9, cached_tokens=4)),
    ]


def test_usage_before_finish_sends_the_last_frame_at_finish_and_close_adds_nothing():
    renderer = wire.StreamRenderer("m")
    renderer.render(StreamStart(id="r", model="x"))
    renderer.render(UsageReport(Usage(1, 1)))

    last = renderer.render(Finish("length"))

    payload = sse_payloads(last)[0]
    assert payload["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert payload["usageMetadata"]["totalTokenCount"] == 2
    assert renderer.close() == b""


def test_streamed_reasoning_goes_out_as_thoughts_in_the_last_chunk_and_parses_back():
    usage = Usage(input_tokens=9, output_tokens=35, cached_tokens=4, reasoning_tokens=25)
    events: list[StreamEvent] = [
        StreamStart(id="r", model="m"),
        TextDelta("Blue."),
        Finish("stop"),
        UsageReport(usage),
    ]
    payloads = sse_payloads(render_all(events))

    assert payloads[-1]["usageMetadata"] == {
        "promptTokenCount": 9,
        "candidatesTokenCount": 10,
        "totalTokenCount": 44,
        "cachedContentTokenCount": 4,
        "thoughtsTokenCount": 25,
    }
    sdk = genai_types.GenerateContentResponse.model_validate(payloads[-1]).usage_metadata
    assert sdk is not None and sdk.thoughts_token_count == 25
    assert feed_all(payloads)[-1] == UsageReport(usage)


def test_stream_without_usage_gets_its_last_frame_from_close():
    renderer = wire.StreamRenderer("m")
    sent = renderer.render(StreamStart(id="r", model="x")) + renderer.render(Finish("stop"))

    closing = sse_payloads(renderer.close())

    assert sent == b""
    assert closing == [
        {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": ""}]}, "index": 0, "finishReason": "STOP"}
            ],
            "modelVersion": "m",
            "responseId": "r",
        }
    ]
    assert genai_types.GenerateContentResponse.model_validate(closing[0]).candidates is not None


# --- 3. Properties ---------------------------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
texts = st.text(min_size=1, max_size=20)
image_parts = st.builds(
    lambda media, data: ImagePart(f"data:{media};base64,{data}"),
    st.sampled_from(["image/png", "image/jpeg", "image/webp"]),
    st.binary(min_size=1, max_size=9).map(lambda raw: base64.b64encode(raw).decode()),
) | st.builds(
    lambda name: ImagePart(f"https://img.example/{name}.png"), st.from_regex(r"[a-z]{1,8}", fullmatch=True)
)


def is_json_object(text: str) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


tool_texts = texts.filter(lambda t: not is_json_object(t)) | json_objects.map(
    lambda o: orjson.dumps(o).decode()
)
arguments = json_objects.map(lambda o: orjson.dumps(o).decode())


@st.composite
def conversations(draw: st.DrawFn) -> tuple[Message, ...]:
    """Conversations Gemini can carry unchanged: no two user or assistant turns side by side."""
    messages = [Message(role="system", parts=(TextPart(t),)) for t in draw(st.lists(texts, max_size=2))]
    call_number = 0
    for _ in range(draw(st.integers(1, 3))):
        messages.append(
            Message(
                role="user",
                parts=tuple(draw(st.lists(texts.map(TextPart) | image_parts, min_size=1, max_size=3))),
            )
        )
        calls = []
        for _ in range(draw(st.integers(0, 3))):
            prefix = draw(st.sampled_from(["call_", "toolu_", "fc-"]))
            calls.append(
                ToolCall(
                    id=f"{prefix}{call_number}",
                    name=draw(st.sampled_from(["f", "g"])),
                    arguments=draw(arguments),
                )
            )
            call_number += 1
        replies = draw(st.lists(texts.map(TextPart) | image_parts, min_size=0 if calls else 1, max_size=2))
        messages.append(Message(role="assistant", parts=tuple(replies), tool_calls=tuple(calls)))
        messages.extend(
            Message(
                role="tool",
                parts=(TextPart(draw(tool_texts)),),
                tool_call_id=c.id,
                name=c.name,
                is_error=draw(st.booleans()),
            )
            for c in calls
        )
    return tuple(messages)


tool_choices = st.none() | st.sampled_from(
    [ToolChoice("auto"), ToolChoice("none"), ToolChoice("required"), ToolChoice("required", "f")]
)
response_formats = (
    st.none()
    | st.sampled_from([ResponseFormat("text"), ResponseFormat("json_object")])
    | json_objects.map(lambda schema: ResponseFormat("json_schema", schema=schema))
)
tools = st.builds(
    Tool,
    name=st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
    description=st.none() | st.text(max_size=10),
    parameters=st.none() | json_objects,
)
representable_requests = st.builds(
    ChatRequest,
    model=st.sampled_from(["gemini-2.5-flash", "gemini-3-pro-preview", "custom"]),
    messages=conversations(),
    max_tokens=st.none() | st.integers(1, 1_000_000),
    temperature=st.none() | st.floats(0, 2),
    top_p=st.none() | st.floats(0, 1),
    stop=st.lists(texts, max_size=3).map(tuple),
    tools=st.lists(tools, max_size=3).map(tuple),
    tool_choice=tool_choices,
    response_format=response_formats,
    stream=st.booleans(),
    seed=st.none() | st.integers(-(2**31), 2**31 - 1),
)


@given(representable_requests)
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_requests_survive_build_then_parse(req: ChatRequest) -> None:
    body = orjson.loads(orjson.dumps(build(req)))  # through real JSON, as on the wire

    assert wire.parse_chat_request(body, model=req.model, stream=req.stream) == req


@st.composite
def gemini_usages(draw: st.DrawFn, limit: int = 2**31) -> Usage:
    """Usage Gemini can carry: reasoning inside the output; cached input, but no cache writes."""
    output_tokens = draw(st.integers(0, limit))
    return Usage(
        input_tokens=draw(st.integers(0, limit)),
        output_tokens=output_tokens,
        cached_tokens=draw(st.integers(0, limit)),
        reasoning_tokens=draw(st.integers(0, output_tokens)),
    )


@st.composite
def representable_responses(draw: st.DrawFn) -> ChatResponse:
    calls = tuple(
        ToolCall(id=f"call_{i}x", name=draw(st.sampled_from(["f", "g"])), arguments=draw(arguments))
        for i in range(draw(st.integers(0, 3)))
    )
    finishes: list[FinishReason] = ["length", "content_filter", "error"]
    finish: FinishReason = draw(st.sampled_from([*finishes, "tool_calls" if calls else "stop"]))
    return ChatResponse(
        id=draw(texts),
        model=draw(st.text(max_size=10)),
        message=Message(
            role="assistant",
            parts=tuple(draw(st.lists(texts.map(TextPart) | image_parts, max_size=3))),
            tool_calls=calls,
        ),
        finish_reason=finish,
        usage=draw(gemini_usages()),
    )


@given(representable_responses())
@settings(deadline=None)
def test_responses_survive_render_then_parse(resp: ChatResponse) -> None:
    rendered = orjson.loads(orjson.dumps(render(resp)))

    assert wire.parse_chat_response(rendered) == resp
    genai_types.GenerateContentResponse.model_validate(rendered)


@st.composite
def canonical_streams(draw: st.DrawFn) -> list[StreamEvent]:
    events: list[StreamEvent] = [StreamStart(id=draw(texts), model="upstream")]
    events += [TextDelta(t) for t in draw(st.lists(texts, max_size=3))]
    for index in range(draw(st.integers(0, 3))):
        events.append(ToolCallStart(index=index, id=f"call_{index}", name="f"))
        args = draw(arguments)
        cuts = sorted(draw(st.lists(st.integers(0, len(args)), max_size=3)))
        events += [
            ToolCallDelta(index=index, arguments=args[a:b])
            for a, b in zip([0, *cuts], [*cuts, len(args)], strict=True)
        ]
    finish_and_usage: list[StreamEvent] = [
        Finish(draw(st.sampled_from(["stop", "length", "content_filter"]))),
        UsageReport(draw(gemini_usages(10**6))),
    ]
    return events + (finish_and_usage if draw(st.booleans()) else finish_and_usage[::-1])


@given(canonical_streams())
@settings(deadline=None)
def test_rendered_streams_parse_back_to_the_same_text_calls_finish_and_usage(
    events: list[StreamEvent],
) -> None:
    payloads = sse_payloads(render_all(events))
    for payload in payloads:
        genai_types.GenerateContentResponse.model_validate(payload)

    parsed = feed_all(payloads)

    def summary(stream: list[StreamEvent]) -> tuple[Any, ...]:
        text = "".join(e.text for e in stream if isinstance(e, TextDelta))
        calls = {e.index: [e.id, e.name, ""] for e in stream if isinstance(e, ToolCallStart)}
        for e in stream:
            if isinstance(e, ToolCallDelta):
                calls[e.index][2] += e.arguments
        call_list = [(i, n, orjson.loads(a)) for i, n, a in calls.values()]
        finishes = [e.reason for e in stream if isinstance(e, Finish)]
        if call_list and finishes == ["stop"]:
            finishes = ["tool_calls"]  # Gemini's STOP with calls reads back as tool_calls
        return text, call_list, finishes, [e.usage for e in stream if isinstance(e, UsageReport)]

    assert summary(parsed) == summary(events)


known_keys = st.sampled_from(
    [
        "contents",
        "role",
        "parts",
        "text",
        "inlineData",
        "mimeType",
        "data",
        "fileData",
        "fileUri",
        "functionCall",
        "functionResponse",
        "name",
        "args",
        "id",
        "response",
        "thought",
        "thoughtSignature",
        "systemInstruction",
        "tools",
        "functionDeclarations",
        "parameters",
        "parametersJsonSchema",
        "type",
        "properties",
        "items",
        "anyOf",
        "nullable",
        "toolConfig",
        "functionCallingConfig",
        "mode",
        "allowedFunctionNames",
        "generationConfig",
        "temperature",
        "topP",
        "maxOutputTokens",
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "candidateCount",
        "seed",
        "model",
        "candidates",
        "content",
        "finishReason",
        "usageMetadata",
        "promptTokenCount",
        "promptFeedback",
        "blockReason",
        "error",
        "embeddings",
        "values",
    ]
)
any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.sampled_from(["user", "model", "ANY", "STOP", "application/json", "OBJECT"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(known_keys | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=25,
)


@given(any_json)
@settings(deadline=None, max_examples=300)
def test_arbitrary_json_request_raises_nothing_but_invalid_request_error(body: Any) -> None:
    try:
        wire.parse_chat_request(body, model="m", stream=False)
    except InvalidRequestError:
        pass


@given(
    st.dictionaries(
        st.just("contents"), st.lists(st.dictionaries(known_keys, any_json, max_size=3), max_size=3)
    )
)
@settings(deadline=None, max_examples=300)
def test_near_valid_contents_raise_nothing_but_invalid_request_error(body: Any) -> None:
    try:
        wire.parse_chat_request(body, model="m", stream=False)
    except InvalidRequestError:
        pass


@given(any_json)
@settings(deadline=None, max_examples=200)
def test_arbitrary_upstream_json_raises_nothing_but_upstream_connection_error(body: Any) -> None:
    parser = wire.StreamParser()
    for attempt in (
        lambda: wire.parse_chat_response(body),
        lambda: parser.feed(None, body),
        lambda: wire.parse_embedding_response(body, model="m"),
    ):
        try:
            attempt()
        except UpstreamConnectionError:
            pass


# --- 4. Bad input ----------------------------------------------------------------------------------

USER_HI: Any = {"role": "user", "parts": [{"text": "hi"}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "contents"),
        ({"contents": {"role": "user"}}, "contents"),
        ({"contents": []}, "contents"),
        ({"contents": ["hi"]}, "contents[0]"),
        ({"contents": [{"role": "user"}]}, "contents[0].parts"),
        ({"contents": [{"role": "assistant", "parts": []}]}, "contents[0].role"),
        ({"contents": [{"role": "user", "parts": ["hi"]}]}, "contents[0].parts[0]"),
        ({"contents": [{"role": "user", "parts": [{"text": 3}]}]}, "contents[0].parts[0].text"),
        (
            {"contents": [{"parts": [{"inlineData": {"data": "AA"}}]}]},
            "contents[0].parts[0].inlineData.mimeType",
        ),
        (
            {"contents": [{"parts": [{"inline_data": {"mime_type": "image/png"}}]}]},
            "contents[0].parts[0].inline_data.data",
        ),
        (
            {"contents": [{"parts": [{"fileData": {"mimeType": "image/png"}}]}]},
            "contents[0].parts[0].fileData.fileUri",
        ),
        (
            {"contents": [{"role": "model", "parts": [{"functionCall": {"args": {}}}]}]},
            "contents[0].parts[0].functionCall.name",
        ),
        (
            {"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f", "args": "{}"}}]}]},
            "contents[0].parts[0].functionCall.args",
        ),
        (
            {
                "contents": [
                    {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"n": 2**70}}}]}
                ]
            },
            "contents[0].parts[0].functionCall.args",
        ),
        (
            {"contents": [{"parts": [{"functionResponse": {"name": "f", "response": "ok"}}]}]},
            "contents[0].parts[0].functionResponse.response",
        ),
        ({"contents": [{"parts": [{"functionCall": {"name": "f"}}]}]}, "contents[0].parts"),
        (
            {"contents": [{"role": "model", "parts": [{"functionResponse": {"name": "f"}}]}]},
            "contents[0].parts",
        ),
        (
            {"contents": [USER_HI], "systemInstruction": {"parts": [{"text": 1}]}},
            "systemInstruction.parts[0].text",
        ),
        ({"contents": [USER_HI], "generationConfig": {"temperature": "hot"}}, "generationConfig.temperature"),
        ({"contents": [USER_HI], "generationConfig": {"temperature": True}}, "generationConfig.temperature"),
        ({"contents": [USER_HI], "generation_config": {"top_p": [1]}}, "generation_config.top_p"),
        (
            {"contents": [USER_HI], "generationConfig": {"maxOutputTokens": 1.5}},
            "generationConfig.maxOutputTokens",
        ),
        (
            {"contents": [USER_HI], "generationConfig": {"maxOutputTokens": 0}},
            "generationConfig.maxOutputTokens",
        ),
        (
            {"contents": [USER_HI], "generationConfig": {"stopSequences": "END"}},
            "generationConfig.stopSequences",
        ),
        (
            {"contents": [USER_HI], "generationConfig": {"stopSequences": ["a", 1]}},
            "generationConfig.stopSequences[1]",
        ),
        (
            {"contents": [USER_HI], "generationConfig": {"candidateCount": 2}},
            "generationConfig.candidateCount",
        ),
        ({"contents": [USER_HI], "generationConfig": {"seed": "1"}}, "generationConfig.seed"),
        (
            {"contents": [USER_HI], "generationConfig": {"responseJsonSchema": True}},
            "generationConfig.responseJsonSchema",
        ),
        ({"contents": [USER_HI], "generationConfig": []}, "generationConfig"),
        ({"contents": [USER_HI], "tools": {}}, "tools"),
        (
            {"contents": [USER_HI], "tools": [{"functionDeclarations": [{"description": "x"}]}]},
            "tools[0].functionDeclarations[0].name",
        ),
        (
            {"contents": [USER_HI], "tools": [{"functionDeclarations": [{"name": "f", "parameters": []}]}]},
            "tools[0].functionDeclarations[0].parameters",
        ),
        (
            {"contents": [USER_HI], "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
            "toolConfig.functionCallingConfig.mode",
        ),
        (
            {
                "contents": [USER_HI],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [1]}},
            },
            "toolConfig.functionCallingConfig.allowedFunctionNames[0]",
        ),
    ],
)
def test_bad_request_raises_invalid_request_error_naming_the_field(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        wire.parse_chat_request(body, model="gemini-2.5-flash", stream=False)

    assert caught.value.param == param


def test_missing_model_and_non_object_body_are_invalid_requests():
    with pytest.raises(InvalidRequestError) as missing_model:
        wire.parse_chat_request({"contents": [USER_HI]}, model="", stream=False)
    with pytest.raises(InvalidRequestError):
        wire.parse_chat_request([USER_HI], model="m", stream=False)  # type: ignore[arg-type]

    assert missing_model.value.param == "model"


def test_deeply_nested_gemini_schema_is_refused_not_a_recursion_error():
    schema: Any = {"type": "STRING"}
    for _ in range(200):
        schema = {"type": "ARRAY", "items": schema}
    body: Any = {
        "contents": [USER_HI],
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": schema}]}],
    }

    with pytest.raises(InvalidRequestError, match="nested too deeply"):
        wire.parse_chat_request(body, model="m", stream=False)


# --- Embeddings ------------------------------------------------------------------------------------


def test_embedding_request_builds_batch_embed_contents_body():
    req = EmbeddingRequest(model="embed", inputs=("hello", "world"), dimensions=256)

    assert wire.build_embedding_request(req, model="gemini-embedding-001") == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "hello"}]},
                "outputDimensionality": 256,
            },
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "world"}]},
                "outputDimensionality": 256,
            },
        ]
    }
    plain = wire.build_embedding_request(
        EmbeddingRequest(model="e", inputs=("x",)), model="models/text-embedding-004"
    )
    assert plain == {
        "requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "x"}]}}]
    }


def test_embedding_response_parses_vectors_in_order():
    body: Any = {"embeddings": [{"values": [0.013, -0.008, 0.25]}, {"values": [1, 0.5, -2]}]}

    assert wire.parse_embedding_response(body, model="embed") == EmbeddingResponse(
        model="embed", vectors=((0.013, -0.008, 0.25), (1.0, 0.5, -2.0))
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"embeddings": {}},
        {"embeddings": [{}]},
        {"embeddings": [{"values": ["1"]}]},
        {"embeddings": [{"values": [True]}]},
    ],
)
def test_malformed_embedding_response_is_an_upstream_connection_error(body):
    with pytest.raises(UpstreamConnectionError):
        wire.parse_embedding_response(body, model="embed")
