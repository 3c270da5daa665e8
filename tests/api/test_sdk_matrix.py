"""The official SDKs, pointed at a real gateway over loopback, reach each of the three fake providers.

Ingress format (openai / anthropic / google-genai SDK) by provider (OpenAI / Anthropic / Gemini fake),
streamed and not, with tools, tool results, images and system prompts; the upstream request each
fake recorded is checked in that provider's own format.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes

from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer, Reply, ToolCallSpec, Usage
from tests.conftest import RunningGateway, serve_gateway

MASTER = "sk-gateway-master-0123456789"
PROVIDERS = ["openai", "anthropic", "gemini"]
ROUTE = {"openai": "gpt-route", "anthropic": "claude-route", "gemini": "gemini-route"}
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    with (
        FakeOpenAI(api_key="up-openai") as fake_openai,
        FakeAnthropic(api_key="up-anthropic") as fake_anthropic,
        FakeGemini(api_key="up-gemini") as fake_gemini,
    ):
        yield {"openai": fake_openai, "anthropic": fake_anthropic, "gemini": fake_gemini}


@pytest.fixture(scope="module")
def gateway(fakes: dict[str, FakeServer]) -> Iterator[RunningGateway]:
    fast = {"connect": 2, "read": 1.5, "total": 5}
    config = {
        "master_key": MASTER,
        # Each scripted fault must reach the client (or the next deployment) as it is: the gateway's
        # own retries of a deployment are tested in tests/api/test_resilience.py.
        "retries": {"max_attempts_per_deployment": 1},
        "models": [
            {
                "name": "gpt-route",
                "deployments": [
                    {
                        "provider": "openai",
                        "model": "gpt-4o-mini",
                        "api_base": fakes["openai"].base_url,
                        "api_key": "up-openai",
                        "timeouts": fast,
                    }
                ],
            },
            {
                "name": "claude-route",
                "deployments": [
                    {
                        "provider": "anthropic",
                        "model": "claude-haiku-4-5",
                        "api_base": fakes["anthropic"].base_url,
                        "api_key": "up-anthropic",
                        "timeouts": fast,
                    }
                ],
            },
            {
                "name": "gemini-route",
                "deployments": [
                    {
                        "provider": "gemini",
                        "model": "gemini-2.5-flash",
                        "api_base": fakes["gemini"].base_url,
                        "api_key": "up-gemini",
                        "timeouts": fast,
                    }
                ],
            },
            {
                "name": "azure-route",
                "deployments": [
                    {
                        "provider": "openai",
                        "model": "my-gpt4o",
                        "api_base": fakes["openai"].url,
                        "api_key": "up-openai",
                        "api_version": "2024-10-21",
                        "price": {"input_per_mtok": 1, "output_per_mtok": 2},
                    }
                ],
            },
            {
                "name": "compat-route",
                "deployments": [
                    {
                        "provider": "openai-compatible",
                        "model": "llama3",
                        "api_base": fakes["openai"].base_url,
                        "api_key": "up-openai",
                        "price": {"input_per_mtok": 0, "output_per_mtok": 0},
                    }
                ],
            },
            {
                "name": "fallback-route",
                "deployments": [
                    {
                        "provider": "anthropic",
                        "model": "claude-haiku-4-5",
                        "api_base": fakes["anthropic"].base_url,
                        "api_key": "up-anthropic",
                        "weight": 1,
                    },
                    {
                        "provider": "gemini",
                        "model": "gemini-2.5-flash",
                        "api_base": fakes["gemini"].base_url,
                        "api_key": "up-gemini",
                        "weight": 0,
                    },
                ],
            },
        ],
    }
    with serve_gateway(config) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_fakes(fakes: dict[str, FakeServer]) -> None:
    for fake in fakes.values():
        fake.reset()


@pytest.fixture(autouse=True)
def fresh_health(request: pytest.FixtureRequest) -> None:
    """Failures scripted by one test must not put a deployment into cooldown for the next."""
    if "gateway" in request.fixturenames:
        request.getfixturevalue("gateway").state.deployment_health.reset()


@pytest.fixture
def openai_client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0) as client:
        yield client


@pytest.fixture
def anthropic_client(gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=MASTER, max_retries=0) as client:
        yield client


@pytest.fixture
def genai_client(gateway: RunningGateway) -> genai.Client:
    return genai.Client(api_key=MASTER, http_options=gtypes.HttpOptions(base_url=gateway.url))


def upstream_text_of_last_user_turn(provider: str, body: dict[str, Any]) -> str:
    """What the fake received as the last user text, read in that provider's own format."""
    if provider == "openai":
        content = body["messages"][-1]["content"]
        return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    if provider == "anthropic":
        content = body["messages"][-1]["content"]
        return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
    return "".join(p.get("text", "") for p in body["contents"][-1]["parts"])


def upstream_system(provider: str, body: dict[str, Any]) -> str:
    if provider == "openai":
        return str(body["messages"][0]["content"]) if body["messages"][0]["role"] == "system" else ""
    if provider == "anthropic":
        system = body.get("system", "")
        return system if isinstance(system, str) else "".join(b["text"] for b in system)
    return "".join(p["text"] for p in body.get("systemInstruction", {}).get("parts", []))


# --- OpenAI SDK in ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_chat(provider: str, openai_client: openai.OpenAI, fakes: dict[str, FakeServer]) -> None:
    reply = openai_client.chat.completions.create(
        model=ROUTE[provider],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello gateway"}],
        temperature=0.2,
        max_tokens=50,
        stop=["END"],
    )
    assert reply.choices[0].message.content == "echo: Hello gateway"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == ROUTE[provider]
    assert reply.usage is not None and reply.usage.prompt_tokens == 4 and reply.usage.completion_tokens == 3
    sent = fakes[provider].last_request.body
    assert upstream_text_of_last_user_turn(provider, sent) == "Hello gateway"
    assert upstream_system(provider, sent) == "Be brief."


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_stream(provider: str, openai_client: openai.OpenAI, fakes: dict[str, FakeServer]) -> None:
    fakes[provider].script.reply(Reply.text("one two three four", chunks=4))
    stream = openai_client.chat.completions.create(
        model=ROUTE[provider],
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    if provider == "openai":
        assert fakes["openai"].last_request.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_async(provider: str, gateway: RunningGateway) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0) as client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model=ROUTE[provider], messages=[{"role": "user", "content": f"number {i}"}]
                    )
                    for i in range(5)
                )
            )
            return [r.choices[0].message.content or "" for r in replies]

    assert asyncio.run(run()) == [f"echo: number {i}" for i in range(5)]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_parallel_tool_calls(
    provider: str, stream: bool, openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(
        Reply.tool_calls(
            ToolCallSpec("get_weather", {"city": "Paris"}), ToolCallSpec("get_weather", {"city": "Rome"})
        )
    )
    request: dict[str, Any] = {
        "model": ROUTE[provider],
        "messages": [{"role": "user", "content": "Weather in Paris and Rome?"}],
        "tools": [WEATHER_TOOL_OPENAI],
    }
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in openai_client.chat.completions.create(**request, stream=True):
            if not chunk.choices:
                continue
            finish = chunk.choices[0].finish_reason or finish
            for delta in chunk.choices[0].delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function and delta.function.name) or ""
                call["arguments"] += (delta.function and delta.function.arguments) or ""
        got = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
        assert all(c["id"] for c in calls.values())
    else:
        reply = openai_client.chat.completions.create(**request)
        finish = reply.choices[0].finish_reason
        got = [
            (c.function.name, json.loads(c.function.arguments))
            for c in reply.choices[0].message.tool_calls or []
        ]  # type: ignore[union-attr]
    assert got == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    assert finish == "tool_calls"
    sent = fakes[provider].last_request.body
    if provider == "openai":
        assert sent["tools"][0]["function"]["name"] == "get_weather"
    elif provider == "anthropic":
        assert sent["tools"][0]["name"] == "get_weather"
        assert sent["tools"][0]["input_schema"]["required"] == ["city"]
    else:
        declaration = sent["tools"][0]["functionDeclarations"][0]
        assert declaration["name"] == "get_weather"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_tool_results_and_images_reach_the_provider_in_its_format(
    provider: str, openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    messages: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    reply = openai_client.chat.completions.create(
        model=ROUTE[provider], messages=messages, tools=[WEATHER_TOOL_OPENAI]
    )
    assert reply.choices[0].message.content
    sent = fakes[provider].last_request.body
    if provider == "openai":
        assert sent["messages"][0]["content"][1]["image_url"]["url"].endswith(PIXEL)
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}
    elif provider == "anthropic":
        image = sent["messages"][0]["content"][1]
        assert image == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
        }
        tool_use = sent["messages"][1]["content"][0]
        assert tool_use["type"] == "tool_use" and tool_use["input"] == {"city": "Paris"}
        result = sent["messages"][2]["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == "call_1"
    else:
        parts = sent["contents"][0]["parts"]
        assert parts[1]["inlineData"] == {"mimeType": "image/png", "data": PIXEL}
        call = sent["contents"][1]["parts"][0]["functionCall"]
        assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
        response = sent["contents"][2]["parts"][0]["functionResponse"]
        assert response["name"] == "get_weather" and response["response"] == {"temp_c": 21}


def test_openai_sdk_json_mode_reaches_each_provider(
    openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    for provider in PROVIDERS:
        openai_client.chat.completions.create(
            model=ROUTE[provider],
            messages=[{"role": "user", "content": "Give me JSON"}],
            response_format={"type": "json_object"},
        )
    assert fakes["openai"].last_request.body["response_format"] == {"type": "json_object"}
    assert "JSON" in upstream_system("anthropic", fakes["anthropic"].last_request.body)
    assert fakes["gemini"].last_request.body["generationConfig"]["responseMimeType"] == "application/json"


def test_openai_sdk_azure_style_deployment(
    openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    reply = openai_client.chat.completions.create(
        model="azure-route", messages=[{"role": "user", "content": "hi azure"}]
    )
    assert reply.choices[0].message.content == "echo: hi azure"
    recorded = fakes["openai"].last_request
    assert recorded.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert recorded.query["api-version"] == "2024-10-21"
    assert recorded.headers["api-key"] == "up-openai"


def test_openai_compatible_servers_get_the_older_max_tokens_field(
    openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    openai_client.chat.completions.create(
        model="compat-route", messages=[{"role": "user", "content": "hi"}], max_tokens=12
    )
    compatible = fakes["openai"].last_request.body
    assert compatible["model"] == "llama3"
    assert compatible["max_tokens"] == 12 and "max_completion_tokens" not in compatible
    openai_client.chat.completions.create(
        model="gpt-route", messages=[{"role": "user", "content": "hi"}], max_tokens=12
    )
    assert fakes["openai"].last_request.body["max_completion_tokens"] == 12


def test_openai_sdk_embeddings(openai_client: openai.OpenAI, fakes: dict[str, FakeServer]) -> None:
    result = openai_client.embeddings.create(model="gpt-route", input=["alpha", "beta"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) > 0
    assert result.data[0].embedding != result.data[1].embedding
    assert fakes["openai"].last_request.path == "/v1/embeddings"
    gemini = openai_client.embeddings.create(model="gemini-route", input="alpha")
    assert len(gemini.data) == 1
    assert fakes["gemini"].last_request.path.endswith(":batchEmbedContents")


# --- Anthropic SDK in ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_sdk_messages(
    provider: str, anthropic_client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    message = anthropic_client.messages.create(
        model=ROUTE[provider],
        max_tokens=64,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hello gateway"}],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: Hello gateway"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3
    sent = fakes[provider].last_request.body
    assert upstream_system(provider, sent) == "Answer in French."
    assert upstream_text_of_last_user_turn(provider, sent) == "Hello gateway"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_sdk_stream(
    provider: str, anthropic_client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(
        Reply.text("alpha beta gamma", chunks=3, usage=Usage(input_tokens=7, output_tokens=3))
    )
    with anthropic_client.messages.stream(
        model=ROUTE[provider], max_tokens=64, messages=[{"role": "user", "content": "go"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "alpha beta gamma"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_tools(
    provider: str, stream: bool, anthropic_client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.tool_calls(ToolCallSpec("get_weather", {"city": "Oslo"})))
    request: dict[str, Any] = {
        "model": ROUTE[provider],
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    }
    if stream:
        with anthropic_client.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = anthropic_client.messages.create(**request)
    tool_uses = [b for b in message.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in tool_uses] == [("get_weather", {"city": "Oslo"})]
    assert message.stop_reason == "tool_use"


def test_anthropic_sdk_tool_result_round_trip(
    anthropic_client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    anthropic_client.messages.create(
        model="gpt-route",
        max_tokens=64,
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"}],
            },
        ],
    )
    sent = fakes["openai"].last_request.body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "toolu_1"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "cold"}


# --- Google Gen AI SDK in -----------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_genai_sdk_generate(provider: str, genai_client: genai.Client, fakes: dict[str, FakeServer]) -> None:
    response = genai_client.models.generate_content(
        model=ROUTE[provider],
        contents="Hello gateway",
        config=gtypes.GenerateContentConfig(
            system_instruction="Be terse.", temperature=0.1, max_output_tokens=40
        ),
    )
    assert response.text == "echo: Hello gateway"
    assert response.candidates and response.candidates[0].finish_reason == gtypes.FinishReason.STOP
    assert response.usage_metadata and response.usage_metadata.candidates_token_count == 3
    sent = fakes[provider].last_request.body
    assert upstream_system(provider, sent) == "Be terse."
    assert upstream_text_of_last_user_turn(provider, sent) == "Hello gateway"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_genai_sdk_stream(provider: str, genai_client: genai.Client, fakes: dict[str, FakeServer]) -> None:
    fakes[provider].script.reply(Reply.text("red green blue", chunks=3))
    chunks = list(genai_client.models.generate_content_stream(model=ROUTE[provider], contents="colours"))
    assert "".join(c.text or "" for c in chunks) == "red green blue"
    assert chunks[-1].usage_metadata and chunks[-1].usage_metadata.candidates_token_count == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_genai_sdk_function_calls(
    provider: str, genai_client: genai.Client, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.tool_calls(ToolCallSpec("get_weather", {"city": "Lima"})))
    tool = gtypes.Tool(
        function_declarations=[
            gtypes.FunctionDeclaration(
                name="get_weather",
                description="Weather",
                parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
            )
        ]
    )
    response = genai_client.models.generate_content(
        model=ROUTE[provider],
        contents="Weather in Lima?",
        config=gtypes.GenerateContentConfig(
            tools=[tool], automatic_function_calling=gtypes.AutomaticFunctionCallingConfig(disable=True)
        ),
    )
    calls = response.function_calls or []
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Lima"})]


# --- Streaming behaviour, failures and fallbacks -------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_first_chunk_reaches_the_client_before_the_upstream_finishes(
    provider: str, openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.text("a b c d e", chunks=5, chunk_delay=0.25))
    started = time.monotonic()
    stream = openai_client.chat.completions.create(
        model=ROUTE[provider], messages=[{"role": "user", "content": "slow"}], stream=True
    )
    first_text_at = None
    for chunk in stream:
        if first_text_at is None and chunk.choices and chunk.choices[0].delta.content:
            first_text_at = time.monotonic() - started
    total = time.monotonic() - started
    assert first_text_at is not None
    assert total >= 0.9  # the upstream needed about five chunk delays
    assert first_text_at < total - 0.5  # and the first text arrived well before it finished


def test_upstream_400_keeps_its_meaning(openai_client: openai.OpenAI, fakes: dict[str, FakeServer]) -> None:
    fakes["anthropic"].script.reply(Reply.error(400, "messages: text content blocks must be non-empty"))
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(
            model="claude-route", messages=[{"role": "user", "content": "x"}]
        )
    assert "text content blocks must be non-empty" in str(caught.value)


def test_upstream_429_passes_retry_after(openai_client: openai.OpenAI, fakes: dict[str, FakeServer]) -> None:
    fakes["openai"].script.reply(Reply.error(429, "slow down", headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as caught:
        openai_client.chat.completions.create(model="gpt-route", messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_upstream_timeout_is_504(
    provider: str, openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.echo(delay=3))
    with pytest.raises(openai.InternalServerError) as caught:
        openai_client.chat.completions.create(
            model=ROUTE[provider], messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 504


@pytest.mark.parametrize("provider", PROVIDERS)
def test_upstream_5xx_and_malformed_replies_are_502(
    provider: str, openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.error(500, "boom"), Reply.not_json("<html>oops</html>"), Reply.drop())
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as caught:
            openai_client.chat.completions.create(
                model=ROUTE[provider], messages=[{"role": "user", "content": "x"}]
            )
        assert caught.value.status_code == 502


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_dropped_midway_ends_with_an_error_event(
    provider: str, openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.drop(after_chunks=3))
    fakes[provider].script.set_default(Reply.text("w1 w2 w3 w4 w5 w6 w7 w8", chunks=8))
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in openai_client.chat.completions.create(
            model=ROUTE[provider], messages=[{"role": "user", "content": "x"}], stream=True
        ):
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert "w8" not in received


def test_fallback_to_the_next_deployment_on_a_retryable_failure(
    openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes["anthropic"].script.reply(Reply.error(529, "overloaded", error_type="overloaded_error"))
    reply = openai_client.chat.completions.create(
        model="fallback-route", messages=[{"role": "user", "content": "fall"}]
    )
    assert reply.choices[0].message.content == "echo: fall"
    assert len(fakes["anthropic"].requests) == 1
    assert len(fakes["gemini"].requests) == 1


def test_no_fallback_on_a_client_error(openai_client: openai.OpenAI, fakes: dict[str, FakeServer]) -> None:
    fakes["anthropic"].script.reply(Reply.error(400, "bad request"))
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(
            model="fallback-route", messages=[{"role": "user", "content": "x"}]
        )
    assert fakes["gemini"].requests == []


def test_client_disconnect_mid_stream_stops_the_relay(
    gateway: RunningGateway, fakes: dict[str, FakeServer]
) -> None:
    fakes["openai"].script.reply(Reply.text(" ".join(f"w{i}" for i in range(40)), chunks=40, chunk_delay=0.1))
    before = _metric(gateway, 'ai_api_requests_total{model="gpt-route",provider="openai",status="error"}')
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-route", messages=[{"role": "user", "content": "x"}], stream=True
        )
        next(iter(stream))
        stream.close()
    deadline = time.monotonic() + 2  # far less than the 4 s the upstream would still take
    while time.monotonic() < deadline:
        if (
            _metric(gateway, 'ai_api_requests_total{model="gpt-route",provider="openai",status="error"}')
            > before
        ):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the gateway kept relaying after the client left")
    assert _metric(gateway, 'ai_api_active_requests{provider="openai"}') == 0
    # The upstream itself saw the gateway hang up: it stopped being read long before its 40th chunk.
    delivery = fakes["openai"].last_request.delivery
    assert delivery.wait(2), "the upstream request was still running 2 s after the client left"
    assert delivery.client_disconnected, f"upstream answer ended as {delivery.outcome!r}"
    assert delivery.events_sent < 15, f"the upstream sent {delivery.events_sent} of 40 chunks"


def _metric(gateway: RunningGateway, sample: str) -> float:
    for line in gateway.metrics.render_latest().decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0
