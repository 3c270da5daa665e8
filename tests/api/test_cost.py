"""A request costs what the provider bills for it: whole or streamed, in every ingress format.

A real gateway sits in front of each fake provider, and every fake answers with one usage that holds
every kind of token: cache reads, cache writes and reasoning. Each provider reports only the parts its
API has fields for, so the bill for each is worked out here by hand from the pinned price table. Every
ingress format, streamed and not, must record exactly that bill in `ai_api_cost_total`, and hand its
client the token counts in that format's own fields.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes
from prometheus_client.parser import text_string_to_metric_families

from ferryman.core.pricing import PINNED_PRICES
from ferryman.errors import ConfigError
from ferryman.settings import settings_from_mapping
from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer, Reply, Usage
from tests.conftest import RunningGateway, serve_gateway

MASTER = "sk-cost-master-0123456789"
PROVIDERS = ["openai", "anthropic", "gemini"]
INGRESSES = ["openai", "anthropic", "gemini"]
SCRIPTED = Usage(
    input_tokens=10_000,
    output_tokens=2_000,
    cached_tokens=6_000,
    cache_write_tokens=3_000,
    reasoning_tokens=500,
)


@dataclass(frozen=True)
class Bill:
    """The upstream model a provider's deployment names, and what SCRIPTED costs there, by hand."""

    model: str
    dollars: float


BILLS = {
    # gpt-5-mini: $0.25 in, $0.025 cached, $2.00 out. OpenAI reports no cache writes, so the 3,000
    # written tokens are plain input: 4,000 x 0.25 + 6,000 x 0.025 + 2,000 x 2.00 (reasoning inside).
    "openai": Bill("gpt-5-mini", (1_000 + 150 + 4_000) / 1_000_000),
    # claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 cache write, $15 out:
    # 1,000 x 3 + 6,000 x 0.30 + 3,000 x 3.75 + 2,000 x 15.
    "anthropic": Bill("claude-sonnet-4-5", (3_000 + 1_800 + 11_250 + 30_000) / 1_000_000),
    # gemini-2.5-flash: $0.30 in, $0.03 cached, $2.50 out (thinking included). No cache writes either:
    # 4,000 x 0.30 + 6,000 x 0.03 + 2,000 x 2.50.
    "gemini": Bill("gemini-2.5-flash", (1_200 + 180 + 5_000) / 1_000_000),
}

# What the client sees, in its own format's fields, when the upstream is `provider`. OpenAI clients get
# (prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cache_write_tokens); Anthropic
# clients (input_tokens, cache_creation_input_tokens, cache_read_input_tokens, output_tokens), uncached
# input apart; Gemini clients (promptTokenCount, cachedContentTokenCount, candidatesTokenCount,
# thoughtsTokenCount), thoughts apart. Only Anthropic reports writes and only it hides reasoning.
CLIENT_SEES: dict[tuple[str, str], tuple[int | None, ...]] = {
    ("openai", "openai"): (10_000, 2_000, 6_000, 500, None),
    ("anthropic", "openai"): (10_000, 2_000, 6_000, 0, 3_000),
    ("gemini", "openai"): (10_000, 2_000, 6_000, 500, None),
    ("openai", "anthropic"): (4_000, 0, 6_000, 2_000),
    ("anthropic", "anthropic"): (1_000, 3_000, 6_000, 2_000),
    ("gemini", "anthropic"): (4_000, 0, 6_000, 2_000),
    ("openai", "gemini"): (10_000, 6_000, 1_500, 500),
    ("anthropic", "gemini"): (10_000, 6_000, 2_000, None),
    ("gemini", "gemini"): (10_000, 6_000, 1_500, 500),
}


def route(provider: str, ingress: str, stream: bool) -> str:
    """One route per case, so each cost counter holds one request's cost and nothing else."""
    return f"{provider}-via-{ingress}-{'stream' if stream else 'whole'}"


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    with FakeOpenAI() as fake_openai, FakeAnthropic() as fake_anthropic, FakeGemini() as fake_gemini:
        servers: dict[str, FakeServer] = {
            "openai": fake_openai,
            "anthropic": fake_anthropic,
            "gemini": fake_gemini,
        }
        for server in servers.values():
            server.script.set_default(Reply.text("Blue, mostly.", chunks=3, usage=SCRIPTED))
        yield servers


def _deployment(provider: str, fakes: dict[str, FakeServer], **extra: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": BILLS[provider].model,
        "api_base": fakes[provider].base_url,
        "api_key": "upstream-key",
        **extra,
    }


@pytest.fixture(scope="module")
def gateway(fakes: dict[str, FakeServer]) -> Iterator[RunningGateway]:
    models = [
        {"name": route(provider, ingress, stream), "deployments": [_deployment(provider, fakes)]}
        for provider in PROVIDERS
        for ingress in INGRESSES
        for stream in (False, True)
    ]
    negotiated = {
        "input_per_mtok": 2.0,
        "output_per_mtok": 10.0,
        "cached_input_per_mtok": 0.2,
        "cache_write_per_mtok": 2.5,
    }
    models.append({"name": "negotiated", "deployments": [_deployment("anthropic", fakes, price=negotiated)]})
    with serve_gateway({"master_key": MASTER, "models": models}) as running:
        yield running


def recorded_cost(gateway: RunningGateway, provider: str, model: str) -> float:
    """The `ai_api_cost_total` of one route, waiting for it: a stream settles as its last byte goes out."""
    deadline = time.monotonic() + 5
    while True:
        for family in text_string_to_metric_families(gateway.metrics.render_latest().decode()):
            for sample in family.samples:
                if sample.name == "ai_api_cost_total" and sample.labels == {
                    "provider": provider,
                    "model": model,
                }:
                    return sample.value
        if time.monotonic() > deadline:
            pytest.fail(f"no cost recorded for {provider}/{model}")
        time.sleep(0.02)


def ask_openai(gateway: RunningGateway, model: str, stream: bool) -> tuple[int | None, ...]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0) as client:
        if stream:
            chunks = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "What colour is the sky?"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = list(chunks)[-1].usage
        else:
            usage = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What colour is the sky?"}]
            ).usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None and usage.completion_tokens_details is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    return (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.prompt_tokens_details.cached_tokens,
        usage.completion_tokens_details.reasoning_tokens,
        usage.prompt_tokens_details.cache_write_tokens,
    )


def ask_anthropic(gateway: RunningGateway, model: str, stream: bool) -> tuple[int | None, ...]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=MASTER, max_retries=0) as client:
        question: list[anthropic.types.MessageParam] = [
            {"role": "user", "content": "What colour is the sky?"}
        ]
        message: anthropic.types.Message
        if stream:
            with client.messages.stream(model=model, max_tokens=256, messages=question) as events:
                message = events.get_final_message()
        else:
            message = client.messages.create(model=model, max_tokens=256, messages=question)
    usage = message.usage
    return (
        usage.input_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
        usage.output_tokens,
    )


def ask_gemini(gateway: RunningGateway, model: str, stream: bool) -> tuple[int | None, ...]:
    client = genai.Client(api_key=MASTER, http_options=gtypes.HttpOptions(base_url=gateway.url))
    if stream:
        usage = list(client.models.generate_content_stream(model=model, contents="What colour is the sky?"))[
            -1
        ].usage_metadata
    else:
        usage = client.models.generate_content(model=model, contents="What colour is the sky?").usage_metadata
    assert usage is not None
    return (
        usage.prompt_token_count,
        usage.cached_content_token_count,
        usage.candidates_token_count,
        usage.thoughts_token_count,
    )


ASK: dict[str, Callable[[RunningGateway, str, bool], tuple[int | None, ...]]] = {
    "openai": ask_openai,
    "anthropic": ask_anthropic,
    "gemini": ask_gemini,
}


@pytest.mark.parametrize("ingress", INGRESSES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_whole_and_streamed_answers_cost_exactly_the_providers_bill(
    gateway: RunningGateway, provider: str, ingress: str
) -> None:
    whole = ASK[ingress](gateway, route(provider, ingress, False), False)
    streamed = ASK[ingress](gateway, route(provider, ingress, True), True)

    assert whole == streamed == CLIENT_SEES[provider, ingress]
    whole_cost = recorded_cost(gateway, provider, route(provider, ingress, False))
    streamed_cost = recorded_cost(gateway, provider, route(provider, ingress, True))
    assert whole_cost == streamed_cost  # the same float: one usage, one formula, whole or streamed
    assert whole_cost == pytest.approx(BILLS[provider].dollars, rel=1e-12)


def test_the_bills_above_use_the_pinned_rates() -> None:
    # If the table changes, the hand-computed bills above must be redone rather than silently pass.
    assert [
        (p.input, p.cached_input, p.cache_write, p.output)
        for p in (PINNED_PRICES[b.model] for b in BILLS.values())
    ] == [
        (0.25, 0.025, None, 2.00),
        (3.00, 0.30, 3.75, 15.00),
        (0.30, 0.03, None, 2.50),
    ]


def test_a_price_override_bills_cache_writes_at_its_own_rate_and_keeps_the_models_output_limit(
    gateway: RunningGateway,
) -> None:
    ask_anthropic(gateway, "negotiated", False)
    # 1,000 x 2 + 6,000 x 0.2 + 3,000 x 2.5 + 2,000 x 10
    expected = (2_000 + 1_200 + 7_500 + 20_000) / 1_000_000
    assert recorded_cost(gateway, "anthropic", "negotiated") == pytest.approx(expected, rel=1e-12)
    (target,) = gateway.state.router.targets("negotiated")
    assert target.price.max_output_tokens == PINNED_PRICES["claude-sonnet-4-5"].max_output_tokens == 64_000


def test_a_price_override_can_set_its_own_output_limit() -> None:
    price = {"input_per_mtok": 1, "output_per_mtok": 2, "max_output_tokens": 1_000}
    deployment = {"provider": "openai", "model": "gpt-5-mini", "api_key": "k", "price": price}
    settings = settings_from_mapping({"models": [{"name": "m", "deployments": [deployment]}]})
    override = settings.models[0].deployments[0].price
    assert override is not None and override.max_output_tokens == 1_000


@pytest.mark.parametrize(
    "bad",
    [{"cache_write_per_mtok": -0.01}, {"max_output_tokens": 0}, {"max_output_tokens": 1.5}],
    ids=["negative-cache-write", "zero-output-limit", "fractional-output-limit"],
)
def test_a_price_override_that_cannot_bill_is_refused(bad: dict[str, Any]) -> None:
    price = {"input_per_mtok": 1, "output_per_mtok": 2, **bad}
    deployment = {"provider": "openai", "model": "gpt-5-mini", "api_key": "k", "price": price}
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({"models": [{"name": "m", "deployments": [deployment]}]})
    (key,) = bad
    assert [path for path, _ in refused.value.problems] == [f"models[0].deployments[0].price.{key}"]
