"""FakeAnthropic driven by the official anthropic SDK: the fake must speak the Messages API's wire format."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam

from ferryman.testing import FakeAnthropic, Reply, ToolCallSpec, Usage

MODEL = "claude-sonnet-4-6"
MESSAGES: list[MessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = ToolCallSpec("get_weather", {"city": "Paris"})


def body_of(error: anthropic.APIStatusError) -> dict[str, Any]:
    assert isinstance(error.body, dict)
    return error.body


def test_default_reply_echoes_and_counts_the_system_prompt(anthropic_fake, anthropic_client):
    message = anthropic_client.messages.create(
        model=MODEL, max_tokens=64, system="Be terse.", messages=MESSAGES
    )

    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "echo: What is the weather in Paris?"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (8, 7)


def test_request_is_recorded_with_version_header_and_system(anthropic_fake, anthropic_client):
    anthropic_client.messages.create(model=MODEL, max_tokens=64, system="Be terse.", messages=MESSAGES)

    request = anthropic_fake.last_request
    assert request.path == "/v1/messages"
    assert request.headers["anthropic-version"]
    assert request.body["system"] == "Be terse."
    assert request.body["max_tokens"] == 64


def test_usage_splits_cache_reads_and_writes_from_input(anthropic_fake, anthropic_client):
    usage = Usage(input_tokens=1000, output_tokens=50, cached_tokens=600, cache_write_tokens=300)
    anthropic_fake.script.reply(Reply.text("cached", usage=usage))

    message = anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    assert message.usage.input_tokens == 100
    assert message.usage.cache_read_input_tokens == 600
    assert message.usage.cache_creation_input_tokens == 300
    assert message.usage.output_tokens == 50


@pytest.mark.parametrize(("finish", "stop_reason"), [("length", "max_tokens"), ("pause_turn", "pause_turn")])
def test_finish_reasons_map_to_stop_reasons(anthropic_fake, anthropic_client, finish, stop_reason):
    anthropic_fake.script.reply(Reply.text("partial", finish=finish))

    message = anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    assert message.stop_reason == stop_reason


def test_stream_has_the_documented_event_sequence(anthropic_fake, anthropic_client):
    anthropic_fake.script.reply(Reply.text("one two three", chunks=3))

    events = list(
        anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)
    )

    assert [event.type for event in events] == [  # the SDK drops pings; the wire test below sees them
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert (
        "".join(event.delta.text for event in events if event.type == "content_block_delta")
        == "one two three"
    )
    assert events[0].message.usage.input_tokens == 6
    assert events[-2].usage.output_tokens == 3
    assert events[-2].delta.stop_reason == "end_turn"
    assert anthropic_fake.last_request.stream is True


async def test_stream_wire_format_names_every_event(anthropic_fake, http):
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    body = {"model": MODEL, "max_tokens": 16, "messages": MESSAGES, "stream": True}
    async with http.post(f"{anthropic_fake.base_url}/v1/messages", json=body, headers=headers) as response:
        raw = (await response.read()).decode()

    frames = [frame for frame in raw.split("\n\n") if frame]
    names = [frame.split("\n")[0].removeprefix("event: ") for frame in frames]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(frame.split("\n")[1].startswith("data: {") for frame in frames)


def test_stream_helper_builds_the_final_message_with_tool_use(anthropic_fake, anthropic_client):
    anthropic_fake.script.reply(
        Reply.tool_calls(WEATHER, ToolCallSpec("get_time", {"tz": "CET"}), text="Checking.")
    )

    with anthropic_client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        event_types = [event.type for event in stream]
        final = stream.get_final_message()

    assert "input_json" in event_types
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Checking."
    assert final.content[1].input == {"city": "Paris"}
    assert final.content[2].name == "get_time"
    assert final.stop_reason == "tool_use"


def test_streamed_tool_input_arrives_as_partial_json_pieces(anthropic_fake, anthropic_client):
    anthropic_fake.script.reply(Reply.tool_calls(WEATHER, chunks=3))

    events = list(
        anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)
    )

    starts = [event for event in events if event.type == "content_block_start"]
    pieces = [event.delta.partial_json for event in events if event.type == "content_block_delta"]
    assert [start.content_block.type for start in starts] == ["tool_use"]
    assert starts[0].content_block.input == {}
    assert pieces[0] == ""
    assert len(pieces) == 4
    assert "".join(pieces) == '{"city":"Paris"}'


def test_tool_use_without_stream(anthropic_fake, anthropic_client):
    anthropic_fake.script.reply(Reply.tool_calls(ToolCallSpec("lookup", {"q": "x"}, id="toolu_given")))

    message = anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    assert [block.type for block in message.content] == ["tool_use"]
    assert message.content[0].id == "toolu_given"
    assert message.stop_reason == "tool_use"


def test_tool_result_answering_the_previous_tool_use_is_accepted(anthropic_client):
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]},
    ]

    message = anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=messages)

    assert message.content[0].text == "echo: What is the weather in Paris?"


def test_tool_result_without_tool_use_is_rejected(anthropic_client):
    messages = [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "18C"}]}
    ]

    with pytest.raises(anthropic.BadRequestError, match="tool_use_id"):
        anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=messages)


def test_system_role_inside_messages_is_rejected(anthropic_client):
    messages = [{"role": "system", "content": "Be terse."}, *MESSAGES]

    with pytest.raises(anthropic.BadRequestError, match="top-level `system`"):
        anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=messages)


async def test_missing_max_tokens_is_rejected(anthropic_fake, http):
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with http.post(
        f"{anthropic_fake.base_url}/v1/messages", json={"model": MODEL, "messages": MESSAGES}, headers=headers
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert body["type"] == "error"
    assert body["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}


async def test_missing_key_is_a_401_authentication_error(anthropic_fake, http):
    async with http.post(
        f"{anthropic_fake.base_url}/v1/messages", json={}, headers={"anthropic-version": "2023-06-01"}
    ) as response:
        assert response.status == 401
        body = await response.json()
    assert body["error"]["type"] == "authentication_error"


async def test_missing_version_header_is_a_400(anthropic_fake, http):
    async with http.post(
        f"{anthropic_fake.base_url}/v1/messages", json={}, headers={"x-api-key": "k"}
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"]["message"] == "anthropic-version: header is required"


async def test_x_api_key_header_is_accepted(anthropic_fake, http):
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    body = {"model": MODEL, "max_tokens": 16, "messages": MESSAGES}
    async with http.post(f"{anthropic_fake.base_url}/v1/messages", json=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["request-id"].startswith("req_")
        assert (await response.json())["content"][0]["text"] == "echo: What is the weather in Paris?"


def test_wrong_key_is_refused_when_a_key_is_required():
    with (
        FakeAnthropic(api_key="right") as fake,
        anthropic.Anthropic(base_url=fake.base_url, api_key="wrong", max_retries=0) as client,
        pytest.raises(anthropic.AuthenticationError),
    ):
        client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)


def test_overloaded_error_with_retry_after(anthropic_fake, anthropic_client):
    anthropic_fake.script.reply(Reply.error(529, headers={"retry-after": "3"}))

    with pytest.raises(anthropic.OverloadedError) as caught:
        anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    assert caught.value.status_code == 529
    assert caught.value.response.headers["retry-after"] == "3"
    assert body_of(caught.value)["error"] == {"type": "overloaded_error", "message": "Overloaded"}


def test_rate_limit_error(anthropic_fake, anthropic_client):
    anthropic_fake.script.reply(Reply.error(429))

    with pytest.raises(anthropic.RateLimitError) as caught:
        anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    assert body_of(caught.value)["error"]["type"] == "rate_limit_error"


def test_error_event_mid_stream(anthropic_fake, anthropic_client):
    anthropic_fake.script.reply(Reply.error(529, after_chunks=3))

    received = []
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        for event in anthropic_client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stream=True
        ):
            received.append(event.type)

    assert received == ["message_start", "content_block_start"]  # the third event was a ping


def test_count_tokens_and_models_do_not_consume_the_script(anthropic_fake, anthropic_client):
    anthropic_fake.script.reply(Reply.error(500))

    counted = anthropic_client.messages.count_tokens(model=MODEL, system="Be terse.", messages=MESSAGES)
    models = [model.id for model in anthropic_client.models.list()]

    assert counted.input_tokens == 8
    assert models == ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-7"]
    assert anthropic_fake.script.pending == 1
