"""Token counting through the official SDKs: Anthropic's count_tokens and Gemini's countTokens.

Each fake counts a prompt as its whitespace-separated words, far from any tokenizer's figure, so a
count the upstream made natively is told apart from the gateway's own estimate (tiktoken for OpenAI).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from ferryman.core.estimate import estimate_input_tokens
from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer
from ferryman.tokenizers import Tokenizers
from ferryman.wire import anthropic as anthropic_wire
from tests.conftest import RunningGateway, serve_gateway

KEY = "fm-count-all-models"
LIMITED = "fm-count-gpt-only"
BROKE = "fm-count-zero-budget"
ONE_PER_MINUTE = "fm-count-one-rpm"
PROVIDERS = ["openai", "anthropic", "gemini"]
ROUTE = {"openai": "gpt-route", "anthropic": "claude-route", "gemini": "gemini-route"}
UPSTREAM_MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
SYSTEM = "You answer tersely"
QUESTION = "How many tokens does this prompt take up"
WORDS = len(SYSTEM.split()) + len(QUESTION.split())  # the fakes' native count
PRICE = {"input_per_mtok": 1, "output_per_mtok": 2}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    with (
        FakeOpenAI(api_key="up-openai") as fake_openai,
        FakeAnthropic(api_key="up-anthropic") as fake_anthropic,
        FakeGemini(api_key="up-gemini") as fake_gemini,
    ):
        yield {"openai": fake_openai, "anthropic": fake_anthropic, "gemini": fake_gemini}


def _deployment(provider: str, fake: FakeServer | None) -> dict[str, object]:
    return {
        "provider": provider,
        "model": UPSTREAM_MODEL[provider],
        # Port 9 (discard) refuses connections: an upstream whose count fails.
        "api_base": fake.base_url if fake is not None else "http://127.0.0.1:9",
        "api_key": f"up-{provider}",
        "price": PRICE,
        "timeouts": {"connect": 1, "read": 1, "total": 2},
    }


@pytest.fixture(scope="module")
def gateway(fakes: dict[str, FakeServer]) -> Iterator[RunningGateway]:
    models = [
        {"name": ROUTE[provider], "deployments": [_deployment(provider, fakes[provider])]}
        for provider in PROVIDERS
    ]
    models.append({"name": "claude-down", "deployments": [_deployment("anthropic", None)]})
    models.append({"name": "gemini-down", "deployments": [_deployment("gemini", None)]})
    config = {
        "models": models,
        "keys": [
            {"alias": "all", "key": KEY},
            {"alias": "gpt-only", "key": LIMITED, "models": ["gpt-route"]},
            {"alias": "broke", "key": BROKE, "budget": {"daily_usd": 0}},
            {"alias": "one-rpm", "key": ONE_PER_MINUTE, "rpm_limit": 1},
        ],
    }
    with serve_gateway(config) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_fakes(fakes: dict[str, FakeServer]) -> None:
    for fake in fakes.values():
        fake.reset()


@pytest.fixture
def anthropic_client(gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def genai_client(gateway: RunningGateway) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=gtypes.HttpOptions(base_url=gateway.url))


def tiktoken_count(system: str | None, question: str) -> int:
    """What the gateway's estimate must be for gpt-4o-mini: OpenAI's chat framing over o200k."""
    body: dict[str, object] = {
        "model": "x",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": question}],
    }
    if system is not None:
        body["system"] = system
    counter = Tokenizers().for_model("openai", "gpt-4o-mini")
    return estimate_input_tokens(anthropic_wire.parse_chat_request(body), counter)


def expected(provider: str, system: str | None = SYSTEM) -> int:
    if provider == "openai":
        return tiktoken_count(system, QUESTION)
    return len(QUESTION.split()) + (len(system.split()) if system else 0)


# --- Anthropic SDK ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_sdk_counts_tokens_on_each_provider(
    provider: str, anthropic_client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    raw = anthropic_client.messages.with_raw_response.count_tokens(
        model=ROUTE[provider], system=SYSTEM, messages=[{"role": "user", "content": QUESTION}]
    )
    counted = raw.parse()
    assert counted.input_tokens == expected(provider)
    assert raw.headers["x-ferryman-token-count"] == ("estimated" if provider == "openai" else "upstream")
    if provider == "openai":
        assert counted.input_tokens != WORDS  # really the tokenizer, not a word count
        assert fakes["openai"].requests == []  # OpenAI has no counting API: nothing was sent
    else:
        assert len(fakes[provider].requests) == 1


def test_anthropic_beta_count_tokens_forwards_the_beta_header(
    anthropic_client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    counted = anthropic_client.beta.messages.count_tokens(
        model="claude-route",
        messages=[{"role": "user", "content": QUESTION}],
        betas=["token-counting-2024-11-01"],
    )
    assert counted.input_tokens == len(QUESTION.split())
    sent = fakes["anthropic"].last_request
    assert sent.path.endswith("/v1/messages/count_tokens")
    assert "token-counting-2024-11-01" in sent.headers["anthropic-beta"]
    assert "max_tokens" not in sent.body  # count_tokens refuses it; the placeholder stays in the gateway


@pytest.mark.parametrize("model", ["claude-down", "gemini-down"])
def test_a_failing_upstream_count_falls_back_to_the_estimate(
    model: str, anthropic_client: anthropic.Anthropic
) -> None:
    raw = anthropic_client.messages.with_raw_response.count_tokens(
        model=model, messages=[{"role": "user", "content": QUESTION}]
    )
    assert raw.headers["x-ferryman-token-count"] == "estimated"
    provider = "anthropic" if model == "claude-down" else "gemini"
    body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": QUESTION}]}
    counter = Tokenizers().for_model(provider, UPSTREAM_MODEL[provider])  # conservative: not OpenAI's
    assert raw.parse().input_tokens == estimate_input_tokens(anthropic_wire.parse_chat_request(body), counter)


def daily_usage(gateway: RunningGateway, key: str) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"}
    window: dict[str, Any] = httpx.get(gateway.url + "/v1/usage", headers=headers).json()["windows"]["daily"]
    return window


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_count_is_in_the_usage_at_no_cost(
    gateway: RunningGateway, anthropic_client: anthropic.Anthropic, genai_client: genai.Client, provider: str
) -> None:
    before = daily_usage(gateway, KEY)
    messages: Any = [{"role": "user", "content": "hi"}]
    anthropic_client.messages.count_tokens(model=ROUTE[provider], messages=messages)
    genai_client.models.count_tokens(model=ROUTE[provider], contents="hi")
    after = daily_usage(gateway, KEY)
    assert after["requests"] == before["requests"] + 2  # governed and recorded like any request...
    assert after["spent_usd"] == before["spent_usd"]  # ...at exactly $0: counting is free everywhere


def test_a_count_takes_a_request_from_the_rate_limit_but_nothing_from_a_budget(
    gateway: RunningGateway,
) -> None:
    body = {"model": "claude-route", "messages": [{"role": "user", "content": "hi"}]}
    with anthropic.Anthropic(base_url=gateway.url, api_key=BROKE, max_retries=0) as broke:
        assert broke.messages.count_tokens(**body).input_tokens > 0  # a spent budget still counts
        with pytest.raises(anthropic.RateLimitError) as refused:
            broke.messages.create(max_tokens=5, **body)
        assert "budget" in refused.value.response.json()["error"]["message"]  # refused by the budget
    with anthropic.Anthropic(base_url=gateway.url, api_key=ONE_PER_MINUTE, max_retries=0) as limited:
        limited.messages.count_tokens(**body)
        with pytest.raises(anthropic.RateLimitError) as limited_out:
            limited.messages.count_tokens(**body)  # the minute's one request was the first count
    assert "x-ratelimit-limit-requests" in limited_out.value.response.headers


def test_anthropic_count_refuses_a_bad_key_a_forbidden_model_and_a_bad_body(gateway: RunningGateway) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key="fm-wrong", max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.count_tokens(model="claude-route", messages=[{"role": "user", "content": "hi"}])
    with anthropic.Anthropic(base_url=gateway.url, api_key=LIMITED, max_retries=0) as client:
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.count_tokens(model="claude-route", messages=[{"role": "user", "content": "hi"}])
    response = httpx.post(
        gateway.url + "/v1/messages/count_tokens",
        json={"model": "claude-route", "messages": "not a list"},
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == "messages" and "messages" in error["error"]["message"]
    unknown = httpx.post(
        gateway.url + "/v1/messages/count_tokens",
        json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": KEY},
    )
    assert unknown.status_code == 404


# --- google-genai SDK ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_genai_sdk_counts_tokens_on_each_provider(provider: str, genai_client: genai.Client) -> None:
    counted = genai_client.models.count_tokens(model=ROUTE[provider], contents=QUESTION)
    assert counted.total_tokens == expected(provider, system=None)


@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_gemini_count_accepts_a_whole_generate_content_request(
    version: str, gateway: RunningGateway, fakes: dict[str, FakeServer]
) -> None:
    body = {
        "generateContentRequest": {
            "model": "models/gemini-route",
            "systemInstruction": {"parts": [{"text": SYSTEM}]},
            "contents": [{"role": "user", "parts": [{"text": QUESTION}]}],
        }
    }
    response = httpx.post(
        f"{gateway.url}/{version}/models/gemini-route:countTokens", json=body, headers={"x-goog-api-key": KEY}
    )
    assert response.status_code == 200
    assert response.json() == {"totalTokens": WORDS}
    assert response.headers["x-ferryman-token-count"] == "upstream"
    assert "generateContentRequest" in fakes["gemini"].last_request.body


def test_gemini_count_refuses_a_bad_key_a_forbidden_model_and_a_bad_body(gateway: RunningGateway) -> None:
    bad_key = genai.Client(api_key="fm-wrong", http_options=gtypes.HttpOptions(base_url=gateway.url))
    with pytest.raises(genai_errors.ClientError) as refused:
        bad_key.models.count_tokens(model="gemini-route", contents="hi")
    assert refused.value.code == 401
    limited = genai.Client(api_key=LIMITED, http_options=gtypes.HttpOptions(base_url=gateway.url))
    with pytest.raises(genai_errors.ClientError) as forbidden:
        limited.models.count_tokens(model="gemini-route", contents="hi")
    assert forbidden.value.code == 403 and forbidden.value.status == "PERMISSION_DENIED"
    response = httpx.post(
        gateway.url + "/v1beta/models/gemini-route:countTokens",
        json={"contents": "not a list"},
        headers={"x-goog-api-key": KEY},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and "contents" in error["message"]
    assert error["details"][0]["metadata"]["param"] == "contents"
