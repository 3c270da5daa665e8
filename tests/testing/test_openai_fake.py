"""FakeOpenAI driven by the official openai SDK: the fake must speak OpenAI's real wire format."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ferryman.testing import FakeOpenAI, Reply, ToolCallSpec, Usage

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
WEATHER = ToolCallSpec("get_weather", {"city": "Paris", "unit": "celsius"})
TIME = ToolCallSpec("get_time", {"timezone": "Europe/Paris"})


def body_of(error: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(error.body, dict)
    return error.body


def test_default_reply_echoes_last_user_message_with_word_count_usage(openai_fake, openai_client):
    completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == "echo: What is the weather in Paris?"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (9, 7)
    assert completion.usage.total_tokens == 16


def test_request_is_recorded_with_bearer_key_and_body(openai_fake, openai_client):
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0.5)

    request = openai_fake.last_request
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["messages"] == MESSAGES
    assert request.body["temperature"] == 0.5
    assert request.stream is False


def test_scripted_text_reports_finish_and_usage_with_cache_and_reasoning(openai_fake, openai_client):
    usage = Usage(input_tokens=120, output_tokens=30, cached_tokens=100, reasoning_tokens=12)
    openai_fake.script.reply(Reply.text("cut short", finish="length", usage=usage))

    completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert completion.choices[0].message.content == "cut short"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 120
    assert completion.usage.completion_tokens == 30
    assert completion.usage.total_tokens == 150
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 100
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 12


def test_stream_splits_text_into_chunks_and_ends_with_usage_chunk(openai_fake, openai_client):
    openai_fake.script.reply(Reply.text("one two three four five six", chunks=3))

    chunks = list(
        openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )

    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) == 3
    assert "".join(contents) == "one two three four five six"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 6)
    assert all(c.usage is None for c in chunks[:-1])
    assert openai_fake.last_request.body["stream_options"] == {"include_usage": True}


def test_stream_without_include_usage_sends_no_usage(openai_fake, openai_client):
    chunks = list(openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))

    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: What is the weather in Paris?"


async def test_stream_wire_format_is_sse_data_lines_ending_with_done(openai_fake, http):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = {"Authorization": "Bearer sk-test"}
    async with http.post(f"{openai_fake.base_url}/chat/completions", json=body, headers=headers) as response:
        raw = (await response.read()).decode()
        content_type = response.headers["Content-Type"]

    assert content_type.startswith("text/event-stream")
    frames = raw.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    assert all(frame.startswith("data: ") for frame in frames[:-1])
    assert json.loads(frames[0].removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_parallel_tool_calls_in_one_completion(openai_fake, openai_client):
    openai_fake.script.reply(Reply.tool_calls(WEATHER, TIME))

    completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert len({call.id for call in calls}) == 2
    assert all(call.id.startswith("call_") for call in calls)


def test_streamed_tool_calls_arrive_as_argument_fragments_per_index(openai_fake, openai_client):
    openai_fake.script.reply(
        Reply.tool_calls(WEATHER, ToolCallSpec("get_time", {"tz": "UTC"}, id="call_mine"), chunks=4)
    )

    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    fragments = 0
    for chunk in openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
        for call in chunk.choices[0].delta.tool_calls or []:
            if call.function and call.function.name:
                names[call.index] = call.function.name
            if call.function and call.function.arguments:
                arguments[call.index] = arguments.get(call.index, "") + call.function.arguments
                fragments += 1
        finish = chunk.choices[0].finish_reason

    assert names == {0: "get_weather", 1: "get_time"}
    assert json.loads(arguments[0]) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(arguments[1]) == {"tz": "UTC"}
    assert fragments == 8
    assert finish == "tool_calls"


def test_tool_calls_can_follow_text(openai_fake, openai_client):
    openai_fake.script.reply(Reply.tool_calls(WEATHER, text="Let me check."))

    message = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices[0].message

    assert message.content == "Let me check."
    assert message.tool_calls is not None
    assert len(message.tool_calls) == 1


def test_scripted_error_raises_the_sdk_status_error_with_headers(openai_fake, openai_client):
    openai_fake.script.reply(Reply.error(429, headers={"retry-after": "2"}))

    with pytest.raises(openai.RateLimitError) as caught:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "2"
    assert body_of(caught.value) == {
        "message": "Rate limit reached for requests.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }


def test_scripted_error_message_type_and_code_are_kept(openai_fake, openai_client):
    openai_fake.script.reply(
        Reply.error(400, "bad tool", error_type="invalid_request_error", code="bad_tool")
    )

    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert caught.value.code == "bad_tool"
    assert body_of(caught.value)["message"] == "bad tool"


def test_scripted_error_body_replaces_the_provider_shape(openai_fake, openai_client):
    openai_fake.script.reply(Reply.error(500, body={"detail": "custom"}))

    with pytest.raises(openai.InternalServerError) as caught:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert caught.value.response.json() == {"detail": "custom"}


def test_stream_error_after_chunks_is_an_error_data_line(openai_fake, openai_client):
    openai_fake.script.reply(Reply.error(500, "upstream melted", after_chunks=2))

    received = []
    with pytest.raises(openai.APIError, match="upstream melted"):
        for chunk in openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ):
            received.append(chunk)

    assert len(received) == 2


def test_wrong_key_is_refused_when_a_key_is_required():
    with (
        FakeOpenAI(api_key="sk-right") as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="sk-wrong", max_retries=0) as client,
    ):
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.code == "invalid_api_key"
        assert fake.script.pending == 0


async def test_missing_key_is_a_401_in_openai_error_shape(openai_fake, http):
    async with http.post(f"{openai_fake.base_url}/chat/completions", json={}) as response:
        assert response.status == 401
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "didn't provide an API key" in error["message"]


def test_stream_options_without_stream_is_rejected_as_openai_does(openai_fake, openai_client):
    openai_fake.script.reply(Reply.text("never sent"))

    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream_options={"include_usage": True}
        )

    assert caught.value.param == "stream_options"
    assert openai_fake.script.pending == 1


def test_tool_message_without_preceding_call_is_rejected(openai_client):
    messages = [*MESSAGES, {"role": "tool", "tool_call_id": "call_nobody", "content": "18C"}]

    with pytest.raises(openai.BadRequestError, match="tool_calls"):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=messages)


def test_tool_message_answering_a_call_is_accepted(openai_client):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]

    completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert completion.choices[0].message.content == "echo: What is the weather in Paris?"


def test_missing_messages_is_rejected(openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=[])

    assert caught.value.param == "messages"


def test_embeddings_are_deterministic_in_float_and_base64(openai_fake, openai_client):
    default = openai_client.embeddings.create(
        model="text-embedding-3-small", input=["red apple", "green pear"]
    )
    as_float = openai_client.embeddings.create(
        model="text-embedding-3-small", input=["red apple", "green pear"], encoding_format="float"
    )

    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 16
    assert default.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-6)
    assert default.data[0].embedding != default.data[1].embedding
    assert (default.usage.prompt_tokens, default.usage.total_tokens) == (4, 4)
    assert openai_fake.requests[0].body["encoding_format"] == "base64"


def test_embeddings_honour_dimensions(openai_client):
    result = openai_client.embeddings.create(model="text-embedding-3-small", input="hello", dimensions=40)

    assert len(result.data) == 1
    assert len(result.data[0].embedding) == 40


def test_models_are_listed_without_consuming_the_script(openai_fake, openai_client):
    openai_fake.script.reply(Reply.error(500))

    models = [model.id for model in openai_client.models.list()]

    assert models == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    assert openai_fake.script.pending == 1


async def test_unknown_path_is_a_404_in_openai_error_shape(openai_fake, http):
    headers = {"Authorization": "Bearer sk-test"}
    async with http.post(f"{openai_fake.base_url}/nowhere", json={}, headers=headers) as response:
        assert response.status == 404
        error = (await response.json())["error"]
    assert error["message"] == "Invalid URL (POST /v1/nowhere)"


def test_azure_deployment_path_with_api_key_and_version(openai_fake):
    with openai.AzureOpenAI(
        azure_endpoint=openai_fake.url, api_key="azure-key", api_version="2024-10-21", max_retries=0
    ) as client:
        completion = client.chat.completions.create(model="my-deployment", messages=MESSAGES)

    assert completion.choices[0].message.content == "echo: What is the weather in Paris?"
    request = openai_fake.last_request
    assert request.path == "/openai/deployments/my-deployment/chat/completions"
    assert request.query["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == "azure-key"


def test_azure_stream_opens_with_a_prompt_filter_chunk(openai_fake):
    with openai.AzureOpenAI(
        azure_endpoint=openai_fake.url, api_key="azure-key", api_version="2024-10-21", max_retries=0
    ) as client:
        chunks = list(client.chat.completions.create(model="my-deployment", messages=MESSAGES, stream=True))

    assert chunks[0].choices == []
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks[1:]) == "echo: What is the weather in Paris?"
    )


async def test_azure_without_api_version_is_not_found(openai_fake, http):
    url = f"{openai_fake.url}/openai/deployments/d/chat/completions"
    async with http.post(url, json={"messages": MESSAGES}, headers={"api-key": "k"}) as response:
        assert response.status == 404
        assert await response.json() == {"error": {"code": "404", "message": "Resource not found"}}


def test_azure_wrong_key_is_refused_in_azure_shape():
    with (
        FakeOpenAI(api_key="right") as fake,
        openai.AzureOpenAI(
            azure_endpoint=fake.url, api_key="wrong", api_version="2024-10-21", max_retries=0
        ) as client,
    ):
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="my-deployment", messages=MESSAGES)
    assert body_of(caught.value)["code"] == "401"


async def test_async_client_against_async_context_manager():
    async with (
        FakeOpenAI() as fake,
        openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as client,
    ):
        fake.script.reply(Reply.text("async hello", chunks=2))
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    assert text == "async hello"


async def test_response_carries_a_request_id(openai_fake, http):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    async with http.post(
        f"{openai_fake.base_url}/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    ) as response:
        assert response.headers["x-request-id"].startswith("req_")
        assert isinstance(await response.json(), dict)


def test_azure_embeddings_on_the_deployment_path(openai_fake):
    with openai.AzureOpenAI(
        azure_endpoint=openai_fake.url, api_key="azure-key", api_version="2024-10-21", max_retries=0
    ) as client:
        result = client.embeddings.create(model="embedder", input="hello world")

    assert len(result.data[0].embedding) == 16
    assert result.model == "embedder"
    assert openai_fake.last_request.path == "/openai/deployments/embedder/embeddings"
