"""The Responses codec: items to canonical messages, canonical answers and streams to Responses JSON."""

from __future__ import annotations

import json

import pytest

from ferryman.core.canonical import (
    ChatResponse,
    Finish,
    JSONObject,
    Message,
    Reasoning,
    ResponseFormat,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    Usage,
    UsageReport,
)
from ferryman.errors import InvalidRequestError
from ferryman.wire.openai_responses import (
    parse_responses_request,
    render_response,
    request_echo,
    responses_options,
)
from ferryman.wire.openai_responses_stream import ResponsesStreamRenderer


def test_items_fold_into_canonical_turns() -> None:
    request = parse_responses_request(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "No emoji."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [{"type": "summary_text", "text": "hm"}],
                    "encrypted_content": "sig",
                },
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
            ],
        }
    )
    roles = [m.role for m in request.messages]
    assert roles == ["system", "system", "user", "assistant", "tool", "assistant"]
    assistant = request.messages[3]
    assert [c.id for c in assistant.tool_calls] == ["c1", "c2"]
    assert assistant.thinking == (ThinkingPart("hm", "sig"),)
    assert request.messages[4] == Message("tool", (TextPart("sunny"),), tool_call_id="c1", name="w")
    assert request.messages[5].text == "Sunny."


def test_request_fields_map_to_canonical() -> None:
    body: JSONObject = {
        "model": "m",
        "input": "hi",
        "max_output_tokens": 20,
        "tool_choice": {"type": "function", "name": "w"},
        "tools": [
            {"type": "function", "name": "w", "parameters": {"type": "object"}},
            {"type": "web_search"},
        ],
        "text": {
            "format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}
        },
        "reasoning": {"effort": "high"},
        "store": False,
        "previous_response_id": "resp_1",
        "some_future_field": 1,
    }
    request = parse_responses_request(body)
    assert request.max_tokens == 20
    assert request.tool_choice == ToolChoice(mode="required", name="w")
    assert [t.name for t in request.tools] == ["w"]
    assert request.response_format == ResponseFormat("json_schema", {"type": "object"}, "out", True)
    assert request.reasoning == Reasoning(effort="high")
    options = responses_options(body)
    assert (options.store, options.previous_response_id) == (False, "resp_1")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": [{"type": "file_search_call"}]}, "input[0].type"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"model": "m", "input": "hi", "store": "yes"}, "store"),
        ({"model": "m", "input": "hi", "metadata": {"a": 1}}, "metadata.a"),
        ({"model": "m", "input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_bad_fields_are_named(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_responses_request(body)  # type: ignore[arg-type]
    assert caught.value.param == param


def test_a_whole_answer_renders_reasoning_text_and_calls_in_order() -> None:
    message = Message(
        "assistant",
        (TextPart("ok"),),
        tool_calls=(ToolCall("c1", "w", "{}"),),
        thinking=(ThinkingPart(redacted_data="xyz"),),
    )
    answer = ChatResponse(
        "up-1", "m", message, "tool_calls", Usage(5, 3, cached_tokens=2, reasoning_tokens=1)
    )
    rendered = render_response(answer, "resp_abc", 7, request_echo({"model": "m"}))
    output = json.loads(json.dumps(rendered["output"]))
    assert [item["type"] for item in output] == ["reasoning", "message", "function_call"]
    assert output[0]["encrypted_content"] == "redacted:xyz"
    assert rendered["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 8,
    }
    back = parse_responses_request({"model": "m", "input": [output[0]]})
    assert back.messages[0].thinking == (ThinkingPart(redacted_data="xyz"),)


def test_a_stream_opens_and_closes_each_item_once() -> None:
    kept: list[ThinkingPart] = []
    renderer = ResponsesStreamRenderer("resp_s", 1, "m", request_echo({}), kept.append)
    events: list[StreamEvent] = [
        StreamStart("up", "m"),
        ThinkingDelta(0, text="hm"),
        ThinkingDelta(0, signature="sig"),
        TextDelta("Hel"),
        TextDelta("lo"),
        ToolCallStart(0, "c1", "w"),
        ToolCallDelta(0, '{"a":'),
        ToolCallDelta(0, "1}"),
        Finish("tool_calls"),
        UsageReport(Usage(4, 2)),
    ]
    raw = b"".join(renderer.render(e) for e in events) + renderer.close()
    frames = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    kinds = [f["type"] for f in frames]
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 3
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
    completed = frames[-1]["response"]
    assert completed["status"] == "completed" and completed["usage"]["total_tokens"] == 6
    assert [item["type"] for item in completed["output"]] == ["reasoning", "message", "function_call"]
    assert completed["output"][2]["arguments"] == '{"a":1}'
    assert kept == [ThinkingPart("hm", "sig")]
