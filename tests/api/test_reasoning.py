"""Reasoning through a real gateway, both ways: each format's setting reaches each provider in that
provider's own shape, and the thinking comes back in the client's own shape.

The official SDKs talk to the gateway over loopback and the fakes record what reached each provider.
Levels and budgets stand for each other through the one table in `core/canonical.py`
(`EFFORT_BUDGETS`): minimal 1024, low 2048, medium 8192, high 24576 tokens. Anthropic clients get
thinking blocks with their signatures, Gemini clients thought parts with their `thoughtSignature`,
and OpenAI chat clients only the reasoning-token count (never the thinking text in `content`).
Reasoning tokens bill at the output rate.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from ferryman.core.pricing import PINNED_PRICES
from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer, Reply, ThinkingSpec, Usage
from tests.conftest import RunningGateway, serve_gateway

MASTER = "sk-reasoning-master-0123456789"
MODELS = {
    "openai": "o4-mini",
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "gemini3": "gemini-3-pro-preview",
    "plain-openai": "gpt-4o-mini",
}
PROVIDER = {"gemini3": "gemini", "plain-openai": "openai"}
ANTHROPIC_SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA/+x==\n"
GEMINI_SIGNATURE = "Cv4BAdHtim8="  # base64 without + or /: google-genai re-encodes it url-safe
THOUGHT = "Compare the two, then answer."
ANSWER = "Paris is warmer."
USAGE = Usage(input_tokens=100, output_tokens=1000, reasoning_tokens=800)


def route(name: str) -> str:
    return f"{name}-route"


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    with FakeOpenAI() as fake_openai, FakeAnthropic() as fake_anthropic, FakeGemini() as fake_gemini:
        yield {"openai": fake_openai, "anthropic": fake_anthropic, "gemini": fake_gemini}


@pytest.fixture(scope="module")
def gateway(fakes: dict[str, FakeServer]) -> Iterator[RunningGateway]:
    config = {
        "master_key": MASTER,
        "retries": {"max_attempts_per_deployment": 1},
        "models": [
            {
                "name": route(name),
                "deployments": [
                    {
                        "provider": PROVIDER.get(name, name),
                        "model": model,
                        "api_base": fakes[PROVIDER.get(name, name)].base_url,
                        "api_key": "up",
                    }
                ],
            }
            for name, model in MODELS.items()
        ],
    }
    with serve_gateway(config) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_fakes(fakes: dict[str, FakeServer]) -> None:
    for fake in fakes.values():
        fake.reset()


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
    options = gtypes.HttpOptions(base_url=gateway.url, retry_options=gtypes.HttpRetryOptions(attempts=1))
    return genai.Client(api_key=MASTER, http_options=options)


def upstream_reasoning(fakes: dict[str, FakeServer], name: str) -> Any:
    """The reasoning setting as the provider behind route `name` received it, in its own shape."""
    body = fakes[PROVIDER.get(name, name)].last_request.body
    if PROVIDER.get(name, name) == "openai":
        return body.get("reasoning_effort")
    if name == "anthropic":
        return body.get("thinking")
    return body.get("generationConfig", {}).get("thinkingConfig")


def thinking_reply(signature: str, *, chunks: int = 1) -> Reply:
    return Reply.text(ANSWER, chunks=chunks, usage=USAGE, thinking=(ThinkingSpec(THOUGHT, signature),))


# --- The setting reaches every provider in its own shape --------------------------------------------

OPENAI_EFFORT_SEEN = {
    "openai": "high",
    "anthropic": {"type": "enabled", "budget_tokens": 24576},
    "gemini": {"thinkingBudget": 24576},
    "gemini3": {"thinkingLevel": "HIGH"},
}


@pytest.mark.parametrize("name", list(OPENAI_EFFORT_SEEN))
def test_openai_reasoning_effort_reaches_each_provider_in_its_shape(
    openai_client: openai.OpenAI, fakes: dict[str, FakeServer], name: str
) -> None:
    openai_client.chat.completions.create(
        model=route(name), messages=[{"role": "user", "content": "Which is warmer?"}], reasoning_effort="high"
    )
    assert upstream_reasoning(fakes, name) == OPENAI_EFFORT_SEEN[name]


def test_a_model_that_does_not_reason_gets_no_reasoning_effort(
    openai_client: openai.OpenAI, fakes: dict[str, FakeServer]
) -> None:
    # OpenAI refuses the field for gpt-4o-mini (the fake too), so it is held back, and the answer comes.
    answer = openai_client.chat.completions.create(
        model=route("plain-openai"), messages=[{"role": "user", "content": "hi"}], reasoning_effort="low"
    )
    assert answer.choices[0].message.content == "echo: hi"
    assert "reasoning_effort" not in fakes["openai"].last_request.body


ANTHROPIC_THINKING_SEEN = {
    "openai": "low",
    "anthropic": {"type": "enabled", "budget_tokens": 2048},
    "gemini": {"thinkingBudget": 2048, "includeThoughts": True},
    "gemini3": {"thinkingLevel": "LOW", "includeThoughts": True},
}


@pytest.mark.parametrize("name", list(ANTHROPIC_THINKING_SEEN))
def test_anthropic_thinking_reaches_each_provider_in_its_shape(
    anthropic_client: anthropic.Anthropic, fakes: dict[str, FakeServer], name: str
) -> None:
    anthropic_client.messages.create(
        model=route(name),
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "Which is warmer?"}],
    )
    assert upstream_reasoning(fakes, name) == ANTHROPIC_THINKING_SEEN[name]


GEMINI_CONFIGS = {
    "budget": gtypes.ThinkingConfig(thinking_budget=8192, include_thoughts=True),
    "level": gtypes.ThinkingConfig(thinking_level=gtypes.ThinkingLevel.MEDIUM, include_thoughts=True),
}
GEMINI_THINKING_SEEN = {
    "openai": "medium",
    "anthropic": {"type": "enabled", "budget_tokens": 8192},
    "gemini": {"thinkingBudget": 8192, "includeThoughts": True},
    "gemini3": {"thinkingLevel": "MEDIUM", "includeThoughts": True},
}


@pytest.mark.parametrize("config", list(GEMINI_CONFIGS))
@pytest.mark.parametrize("name", list(GEMINI_THINKING_SEEN))
def test_gemini_thinking_config_reaches_each_provider_in_its_shape(
    genai_client: genai.Client, fakes: dict[str, FakeServer], name: str, config: str
) -> None:
    genai_client.models.generate_content(
        model=route(name),
        contents="Which is warmer?",
        config=gtypes.GenerateContentConfig(thinking_config=GEMINI_CONFIGS[config]),
    )
    assert upstream_reasoning(fakes, name) == GEMINI_THINKING_SEEN[name]


# --- Thinking comes back in the client's own shape --------------------------------------------------


@pytest.mark.parametrize("name", ["anthropic", "gemini"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_clients_get_reasoning_tokens_and_never_the_thinking_text(
    openai_client: openai.OpenAI, fakes: dict[str, FakeServer], name: str, stream: bool
) -> None:
    fakes[name].script.reply(thinking_reply(ANTHROPIC_SIGNATURE, chunks=3))
    request: Any = {
        "model": route(name),
        "messages": [{"role": "user", "content": "Which is warmer?"}],
        "reasoning_effort": "low",
    }
    if stream:
        chunks = list(
            openai_client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        completion = openai_client.chat.completions.create(**request)
        text, usage = completion.choices[0].message.content or "", completion.usage
    assert text == ANSWER  # the thinking is not mixed in
    assert usage is not None and usage.completion_tokens_details is not None
    # Anthropic does not count thinking apart (0); Gemini does (its thoughtsTokenCount).
    assert usage.completion_tokens_details.reasoning_tokens == (800 if name == "gemini" else 0)
    assert usage.completion_tokens == 1000


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_anthropic_clients_get_gemini_thoughts_as_thinking_blocks(
    anthropic_client: anthropic.Anthropic, fakes: dict[str, FakeServer], stream: bool
) -> None:
    fakes["gemini"].script.reply(thinking_reply(GEMINI_SIGNATURE, chunks=3))
    request: Any = {
        "model": route("gemini"),
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "Which is warmer?"}],
    }
    if stream:
        with anthropic_client.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = anthropic_client.messages.create(**request)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].type == "thinking" and message.content[0].thinking == THOUGHT
    assert message.content[1].type == "text" and message.content[1].text == ANSWER


def _thought_and_answer(parts: list[gtypes.Part]) -> tuple[str, str, list[bytes | None]]:
    thought = "".join(p.text or "" for p in parts if p.thought)
    answer = "".join(p.text or "" for p in parts if not p.thought)
    return thought, answer, [p.thought_signature for p in parts if p.thought_signature]


THINK = gtypes.GenerateContentConfig(thinking_config=gtypes.ThinkingConfig(include_thoughts=True))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_gemini_clients_get_anthropic_thinking_as_signed_thought_parts(
    genai_client: genai.Client, fakes: dict[str, FakeServer], stream: bool
) -> None:
    signature = "RXFRQkNnSVlBaElNMWdiY0Rh"  # base64, as google-genai insists a thoughtSignature be
    fakes["anthropic"].script.reply(thinking_reply(signature, chunks=3))
    if stream:
        chunks = genai_client.models.generate_content_stream(
            model=route("anthropic"), contents="Hi", config=THINK
        )
        parts = [p for c in chunks if c.candidates for p in (c.candidates[0].content.parts or [])]  # type: ignore[union-attr]
    else:
        response = genai_client.models.generate_content(model=route("anthropic"), contents="Hi", config=THINK)
        assert response.candidates and response.candidates[0].content
        parts = response.candidates[0].content.parts or []
    assert _thought_and_answer(parts) == (THOUGHT, ANSWER, [base64.b64decode(signature)])


def test_a_gemini_thought_signature_survives_the_second_turn(
    genai_client: genai.Client, fakes: dict[str, FakeServer]
) -> None:
    fakes["gemini"].script.reply(thinking_reply(GEMINI_SIGNATURE))
    first = genai_client.models.generate_content(
        model=route("gemini"), contents="Which is warmer?", config=THINK
    )
    assert first.candidates and first.candidates[0].content
    thought, answer, _ = _thought_and_answer(first.candidates[0].content.parts or [])
    assert (thought, answer) == (THOUGHT, ANSWER)
    history = [
        gtypes.Content(role="user", parts=[gtypes.Part(text="Which is warmer?")]),
        first.candidates[0].content,
        gtypes.Content(role="user", parts=[gtypes.Part(text="And tomorrow?")]),
    ]
    genai_client.models.generate_content(model=route("gemini"), contents=history, config=THINK)
    sent = fakes["gemini"].last_request.body["contents"][1]["parts"]
    assert sent == [
        {"text": THOUGHT, "thought": True},
        {"text": ANSWER, "thoughtSignature": GEMINI_SIGNATURE},  # on the part it came with, intact
    ]


def test_a_streamed_gemini_signature_comes_on_its_own_part_and_goes_back(
    genai_client: genai.Client, fakes: dict[str, FakeServer]
) -> None:
    fakes["gemini"].script.reply(thinking_reply(GEMINI_SIGNATURE, chunks=2))
    chunks = list(
        genai_client.models.generate_content_stream(model=route("gemini"), contents="Hi", config=THINK)
    )
    parts = [
        p
        for c in chunks
        if c.candidates and c.candidates[0].content
        for p in c.candidates[0].content.parts or []
    ]
    thought, answer, signatures = _thought_and_answer(parts)
    assert (thought, answer, len(signatures)) == (THOUGHT, ANSWER, 1)
    assert chunks[-1].usage_metadata is not None and chunks[-1].usage_metadata.thoughts_token_count == 800


# --- Reasoning bills as output ----------------------------------------------------------------------


def _dollars(model: str) -> float:
    price = PINNED_PRICES[model]
    return (USAGE.input_tokens * price.input + USAGE.output_tokens * price.output) / 1_000_000


@pytest.mark.parametrize("name", ["openai", "gemini"])
def test_reasoning_tokens_are_billed_at_the_output_rate_whole_and_streamed(
    openai_client: openai.OpenAI, fakes: dict[str, FakeServer], name: str
) -> None:
    fakes[name].script.set_default(thinking_reply(GEMINI_SIGNATURE, chunks=2))
    request: Any = {
        "model": route(name),
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": "high",
    }
    raw = openai_client.chat.completions.with_raw_response.create(**request)
    assert raw.parse().usage.completion_tokens_details.reasoning_tokens == 800  # type: ignore[union-attr]
    assert float(raw.headers["x-ferryman-cost-usd"]) == pytest.approx(_dollars(MODELS[name]), rel=1e-9)
    with openai_client.chat.completions.with_streaming_response.create(**request, stream=True) as streamed:
        comments = [line for line in streamed.iter_lines() if line.startswith(": ferryman-cost-usd=")]
    assert len(comments) == 1
    assert float(comments[0].partition("=")[2]) == pytest.approx(_dollars(MODELS[name]), rel=1e-9)


# --- Bad values are refused in each format's own error shape ----------------------------------------


def test_a_bad_reasoning_effort_is_an_openai_400_naming_it(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(
            model=route("openai"),
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"reasoning_effort": "extreme"},
        )
    error: Any = refused.value.body
    assert error["param"] == "reasoning_effort" and "reasoning_effort" in error["message"]


def test_a_bad_responses_effort_is_a_400_naming_it(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.responses.create(
            model=route("openai"), input="hi", extra_body={"reasoning": {"effort": "extreme"}}
        )
    error: Any = refused.value.body
    assert error["param"] == "reasoning.effort"


@pytest.mark.parametrize(
    ("thinking", "field"),
    [
        ({"thinking_budget": 1024, "thinking_level": "LOW"}, "thinking_level"),  # the SDK's spelling
        ({"thinking_budget": -2}, "thinking_budget"),
    ],
)
def test_a_bad_thinking_config_is_a_gemini_400_naming_it(
    genai_client: genai.Client, thinking: dict[str, Any], field: str
) -> None:
    with pytest.raises(genai_errors.ClientError) as refused:
        genai_client.models.generate_content(
            model=route("gemini"),
            contents="hi",
            config=gtypes.GenerateContentConfig(thinking_config=gtypes.ThinkingConfig(**thinking)),
        )
    assert refused.value.code == 400 and refused.value.status == "INVALID_ARGUMENT"
    assert f"generationConfig.thinkingConfig.{field}" in str(refused.value.message)


def test_a_bad_thinking_level_is_a_gemini_400_naming_it(gateway: RunningGateway) -> None:
    reply = httpx.post(
        gateway.url + f"/v1beta/models/{route('gemini')}:generateContent",
        headers={"x-goog-api-key": MASTER},
        json={
            "contents": [{"parts": [{"text": "hi"}]}],
            "generationConfig": {"thinkingConfig": {"thinkingLevel": "ULTRA"}},
        },
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and "thinkingConfig.thinkingLevel" in error["message"]


def test_a_bad_anthropic_thinking_type_is_an_anthropic_400_naming_it(
    anthropic_client: anthropic.Anthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        anthropic_client.messages.create(
            model=route("anthropic"),
            max_tokens=4096,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"thinking": {"type": "sometimes"}},
        )
    error: Any = refused.value.body
    assert error["type"] == "error" and "thinking.type" in error["error"]["message"]
