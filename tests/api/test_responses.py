"""The official openai SDK's Responses API, pointed at a real gateway, reaches each of the three fakes;
stored responses are retrieved, listed, continued and deleted per key, and requests are charged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from ferryman.testing import (
    FakeAnthropic,
    FakeGemini,
    FakeOpenAI,
    FakeServer,
    Reply,
    ThinkingSpec,
    ToolCallSpec,
    Usage,
)
from tests.conftest import RunningGateway, serve_gateway

ALICE = "fm-responses-alice"
BOB = "fm-responses-bob"
PROVIDERS = ["openai", "anthropic", "gemini"]
ROUTE = {"openai": "gpt-route", "anthropic": "claude-route", "gemini": "gemini-route"}
UPSTREAM = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}


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
    config = {
        "keys": [{"alias": "alice", "key": ALICE}, {"alias": "bob", "key": BOB}],
        "retries": {"max_attempts_per_deployment": 1},
        "models": [
            {
                "name": ROUTE[provider],
                "deployments": [
                    {
                        "provider": provider,
                        "model": UPSTREAM[provider],
                        "api_base": fakes[provider].base_url,
                        "api_key": f"up-{provider}",
                        "price": {"input_per_mtok": 1, "output_per_mtok": 2},
                    }
                ],
            }
            for provider in PROVIDERS
        ],
    }
    with serve_gateway(config) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_fakes(fakes: dict[str, FakeServer]) -> None:
    for fake in fakes.values():
        fake.reset()


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=ALICE, max_retries=0) as sdk:
        yield sdk


def sent(fake: FakeServer) -> str:
    """The last upstream body, as text to search."""
    return json.dumps(fake.requests[-1].body)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_create_answers_with_text_and_usage(
    provider: str, client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.text("Hello there", usage=Usage(input_tokens=9, output_tokens=2)))
    response = client.responses.create(model=ROUTE[provider], input="Hello gateway", max_output_tokens=50)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Hello there"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 2)
    assert response.usage.total_tokens == 11
    assert "Hello gateway" in sent(fakes[provider])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_instructions_reach_the_upstream_as_its_system_prompt(
    provider: str, client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.text("Brief."))
    response = client.responses.create(
        model=ROUTE[provider], instructions="Answer like a pirate.", input=[{"role": "user", "content": "Hi"}]
    )
    assert response.output_text == "Brief."
    assert response.instructions == "Answer like a pirate."
    body = fakes[provider].requests[-1].body
    key = {"openai": "messages", "anthropic": "system", "gemini": "systemInstruction"}[provider]
    system = json.dumps(body[key][0] if provider == "openai" else body[key])
    assert "Answer like a pirate." in system


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_function_call_arrives_and_its_output_goes_back(
    provider: str, client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.tool_calls(ToolCallSpec("get_weather", {"city": "Oslo"})))
    first = client.responses.create(model=ROUTE[provider], input="Weather in Oslo?", tools=[WEATHER])  # type: ignore[list-item]
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]
    fakes[provider].script.reply(Reply.text("It is sunny in Oslo."))
    second = client.responses.create(
        model=ROUTE[provider],
        tools=[WEATHER],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"},
        ],
    )
    assert second.output_text == "It is sunny in Oslo."
    assert "sunny, 21C" in sent(fakes[provider])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_previous_response_id_sends_the_earlier_turns(
    provider: str, client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(Reply.text("My name is Ferry."))
    first = client.responses.create(model=ROUTE[provider], input="What is your name?")
    fakes[provider].script.reply(Reply.text("You asked my name."))
    second = client.responses.create(
        model=ROUTE[provider], input="What did I ask?", previous_response_id=first.id
    )
    assert second.output_text == "You asked my name."
    upstream = sent(fakes[provider])
    assert "What is your name?" in upstream and "My name is Ferry." in upstream
    assert "What did I ask?" in upstream


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_through_the_sdk_helper(
    provider: str, client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes[provider].script.reply(
        Reply.text("alpha beta gamma", chunks=3, usage=Usage(input_tokens=7, output_tokens=3))
    )
    with client.responses.stream(model=ROUTE[provider], input="go") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "alpha beta gamma"
    assert final.output_text == "alpha beta gamma"
    assert final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 3
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == "alpha beta gamma"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_streamed_function_call(provider: str, client: openai.OpenAI, fakes: dict[str, FakeServer]) -> None:
    fakes[provider].script.reply(Reply.tool_calls(ToolCallSpec("get_weather", {"city": "Lima"})))
    with client.responses.stream(model=ROUTE[provider], input="Weather in Lima?", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Lima"})]


def test_raw_stream_events_are_numbered_in_order(
    gateway: RunningGateway, fakes: dict[str, FakeServer]
) -> None:
    fakes["openai"].script.reply(Reply.text("one two", chunks=2))
    with httpx.stream(
        "POST",
        gateway.url + "/v1/responses",
        json={"model": "gpt-route", "input": "go", "stream": True},
        headers={"authorization": f"Bearer {ALICE}"},
    ) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: ")]
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for expected in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
    ):
        assert expected in kinds
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


def test_retrieve_delete_and_input_items(client: openai.OpenAI, fakes: dict[str, FakeServer]) -> None:
    fakes["openai"].script.reply(Reply.text("Stored answer"))
    created = client.responses.create(model="gpt-route", input="Keep this", metadata={"topic": "test"})
    again = client.responses.retrieve(created.id)
    assert again.id == created.id and again.output_text == "Stored answer"
    assert again.metadata == {"topic": "test"}
    items = client.responses.input_items.list(created.id)
    texts = [part.text for item in items.data if item.type == "message" for part in item.content]  # type: ignore[union-attr]
    assert texts == ["Keep this"]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_another_keys_response_is_not_found(
    gateway: RunningGateway, client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    fakes["openai"].script.reply(Reply.text("Alice's"))
    created = client.responses.create(model="gpt-route", input="mine")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=BOB, max_retries=0) as bob:
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.create(model="gpt-route", input="next", previous_response_id=created.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(created.id)
    assert client.responses.retrieve(created.id).output_text == "Alice's"


def test_store_false_is_not_kept(client: openai.OpenAI, fakes: dict[str, FakeServer]) -> None:
    fakes["openai"].script.reply(Reply.text("Forget me"))
    created = client.responses.create(model="gpt-route", input="private", store=False)
    assert created.output_text == "Forget me"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "gpt-route", "input": 7}, "input"),
        ({"model": "gpt-route", "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"model": "gpt-route", "input": "hi", "temperature": "hot"}, "temperature"),
        ({"model": "gpt-route", "input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"model": "gpt-route", "input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(
    gateway: RunningGateway, body: dict[str, object], field: str
) -> None:
    reply = httpx.post(gateway.url + "/v1/responses", json=body, headers={"authorization": f"Bearer {ALICE}"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == field and field in error["message"]


def test_a_response_is_charged_and_shows_in_usage(
    gateway: RunningGateway, client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    headers = {"authorization": f"Bearer {ALICE}"}
    before = httpx.get(gateway.url + "/v1/usage", headers=headers).json()["windows"]["daily"]
    fakes["openai"].script.reply(Reply.text("paid", usage=Usage(input_tokens=1000, output_tokens=500)))
    raw = client.responses.with_raw_response.create(model="gpt-route", input="charge me")
    assert float(raw.headers["x-ferryman-cost-usd"]) == pytest.approx(0.002)
    after = httpx.get(gateway.url + "/v1/usage", headers=headers).json()["windows"]["daily"]
    assert after["requests"] == before["requests"] + 1
    assert after["spent_usd"] == pytest.approx(before["spent_usd"] + 0.002)


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_comes_back_as_reasoning_and_its_signature_survives(
    stream: bool, client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    thought = ThinkingSpec("Let me think.", signature="sig-anthropic-42")
    fakes["anthropic"].script.reply(Reply.text("Forty-two.", thinking=(thought,)))
    request: dict[str, Any] = {
        "model": "claude-route",
        "input": "Meaning of life?",
        "reasoning": {"effort": "low"},
    }
    if stream:
        with client.responses.stream(**request) as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(**request)
    reasoning = [item for item in first.output if item.type == "reasoning"]
    assert [item.encrypted_content for item in reasoning] == ["sig-anthropic-42"]
    assert first.output_text == "Forty-two."
    fakes["anthropic"].script.reply(Reply.text("Still forty-two."))
    client.responses.create(model="claude-route", input="Sure?", previous_response_id=first.id)
    assert "sig-anthropic-42" in sent(fakes["anthropic"])
    fakes["anthropic"].script.reply(Reply.text("Again."))
    items: list[Any] = [item.model_dump(exclude_none=True) for item in first.output]
    client.responses.create(
        model="claude-route",
        input=[{"role": "user", "content": "Q"}, *items, {"role": "user", "content": "More?"}],
    )
    assert "sig-anthropic-42" in sent(fakes["anthropic"])


@pytest.mark.parametrize("stream", [False, True])
def test_the_openai_fake_answers_responses_natively(stream: bool, fakes: dict[str, FakeServer]) -> None:
    fake = fakes["openai"]
    fake.script.reply(
        Reply.text("native answer", chunks=2), Reply.tool_calls(ToolCallSpec("get_weather", {"city": "Rome"}))
    )
    text: Response
    called: Response
    with openai.OpenAI(base_url=fake.base_url, api_key="up-openai", max_retries=0) as sdk:
        if stream:
            with sdk.responses.stream(model="gpt-4o-mini", input="hi") as events:
                text = events.get_final_response()
            with sdk.responses.stream(model="gpt-4o-mini", input="weather?", tools=[WEATHER]) as events:  # type: ignore[list-item]
                called = events.get_final_response()
        else:
            text = sdk.responses.create(model="gpt-4o-mini", input="hi")
            called = sdk.responses.create(model="gpt-4o-mini", input="weather?", tools=[WEATHER])  # type: ignore[list-item]
        with pytest.raises(openai.BadRequestError):
            sdk.responses.create(model="gpt-4o-mini")
    assert text.output_text == "native answer"
    calls = [item for item in called.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Rome"})]
    assert fake.requests[0].path == "/v1/responses"


def test_a_failure_mid_stream_is_an_error_event_then_response_failed(
    gateway: RunningGateway, fakes: dict[str, FakeServer]
) -> None:
    fakes["openai"].script.reply(Reply.drop(after_chunks=2))
    with httpx.stream(
        "POST",
        gateway.url + "/v1/responses",
        json={"model": "gpt-route", "input": "go", "stream": True},
        headers={"authorization": f"Bearer {ALICE}"},
    ) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: ")]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-2:] == ["error", "response.failed"]
    assert events[-1]["response"]["status"] == "failed"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
