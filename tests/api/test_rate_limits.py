"""Rate limits over real HTTP with the official SDKs: headers, refusal shapes, Retry-After, metrics,
and deployment quotas that keep an upstream from ever answering 429."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ferryman.core.estimate import estimate_input_tokens
from ferryman.testing import FakeOpenAI, Reply, Usage
from ferryman.tokenizers import Tokenizers
from ferryman.wire import openai as openai_wire
from tests.conftest import RunningGateway, serve_gateway

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def config(upstream: FakeOpenAI, **key: Any) -> dict[str, Any]:
    deployment = {"provider": "openai", "model": "gpt-4o-mini", "api_base": upstream.base_url, "api_key": "k"}
    return {
        "keys": [{"alias": "limited", "key": "fm-limited-key", **key}],
        "models": [{"name": "chat", "deployments": [deployment]}],
    }


def metric(gateway: RunningGateway, sample: str) -> float:
    for line in gateway.metrics.render_latest().decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_the_openai_sdk_sees_the_headers_and_the_429(upstream: FakeOpenAI) -> None:
    with (
        serve_gateway(config(upstream, rpm_limit=2)) as gateway,
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="fm-limited-key", max_retries=0) as client,
    ):
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO)  # type: ignore[arg-type]
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        assert raw.headers["x-ratelimit-reset-requests"] == "60s"
        client.chat.completions.create(model="chat", messages=HELLO)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="chat", messages=HELLO)  # type: ignore[arg-type]
        response = refused.value.response
        assert response.status_code == 429
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.value.code == "rate_limit_exceeded"
        assert "key" in refused.value.message and "2 requests per minute" in refused.value.message
        assert len(upstream.requests) == 2  # the refused request never left the gateway
        assert metric(gateway, 'ai_api_rate_limited_total{scope="key"}') == 1


def test_the_sdk_waits_retry_after_and_then_gets_through(upstream: FakeOpenAI) -> None:
    upstream.script.reply(Reply.text("slow", delay=0.6))
    with (
        serve_gateway(config(upstream, max_parallel=1)) as gateway,
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="fm-limited-key", max_retries=2) as client,
        httpx.Client(base_url=gateway.url, timeout=10) as raw,
    ):
        import threading

        first = threading.Thread(
            target=lambda: raw.post(
                "/v1/chat/completions",
                json={"model": "chat", "messages": HELLO},
                headers={"authorization": "Bearer fm-limited-key"},
            )
        )
        first.start()
        deadline = time.monotonic() + 5
        while not upstream.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        reply = client.chat.completions.create(model="chat", messages=HELLO)  # type: ignore[arg-type]
        waited = time.monotonic() - started
        first.join()
    assert reply.choices[0].message.content == "echo: hi"
    assert waited >= 0.9  # refused once with Retry-After: 1, waited, then admitted
    assert metric(gateway, 'ai_api_rate_limited_total{scope="key"}') >= 1


def test_each_ingress_format_refuses_in_its_own_shape(upstream: FakeOpenAI) -> None:
    with serve_gateway(config(upstream, rpm_limit=1)) as gateway:
        headers = {"authorization": "Bearer fm-limited-key"}
        httpx.post(
            gateway.url + "/v1/chat/completions", json={"model": "chat", "messages": HELLO}, headers=headers
        )
        with (
            anthropic.Anthropic(base_url=gateway.url, api_key="fm-limited-key", max_retries=0) as claude,
            pytest.raises(anthropic.RateLimitError) as refused,
        ):
            claude.messages.create(model="chat", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]
        assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        gemini = httpx.post(
            gateway.url + "/v1beta/models/chat:generateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": "fm-limited-key"},
        )
        assert gemini.status_code == 429
        assert gemini.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert gemini.json()["error"]["details"][0]["reason"] == "rate_limit_exceeded"
        assert "retry-after" in gemini.headers


def test_a_deployment_quota_keeps_its_upstream_from_ever_answering_429() -> None:
    with FakeOpenAI() as primary, FakeOpenAI() as spare:
        # The primary's own quota is 3 a minute: past it, it would answer 429.
        primary.script.reply(Reply.text("a"), Reply.text("b"), Reply.text("c"))
        primary.script.set_default(Reply.error(429, "quota exceeded"))
        base = {"provider": "openai", "model": "gpt-4o-mini", "api_key": "k"}
        gateway_config = {
            "models": [
                {
                    "name": "chat",
                    "deployments": [
                        {**base, "api_base": primary.base_url, "name": "primary", "limits": {"rpm": 3}},
                        {**base, "api_base": spare.base_url, "name": "spare", "weight": 0},
                    ],
                }
            ]
        }
        with serve_gateway(gateway_config) as gateway:
            answers = [
                httpx.post(gateway.url + "/v1/chat/completions", json={"model": "chat", "messages": HELLO})
                for _ in range(6)
            ]
        assert [a.status_code for a in answers] == [200] * 6
        assert [a.headers["x-ferryman-deployment"] for a in answers] == ["primary"] * 3 + ["spare"] * 3
        assert len(primary.requests) == 3 and len(spare.requests) == 3


def test_tokens_per_minute_reserve_the_tokenizer_estimate_then_settle_to_the_usage(
    upstream: FakeOpenAI,
) -> None:
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "user", "content": "How many tokens is this, exactly?"}],
    }
    counter = Tokenizers().for_model("openai", "gpt-4o-mini")  # the deployment's: o200k, exact
    estimate = estimate_input_tokens(openai_wire.parse_chat_request(body), counter)
    assert estimate != estimate_input_tokens(openai_wire.parse_chat_request(body))  # not the old rule
    upstream.script.set_default(Reply.text("ok", usage=Usage(input_tokens=50, output_tokens=20)))
    headers = {"authorization": "Bearer fm-limited-key"}
    with serve_gateway(config(upstream, tpm_limit=10_000)) as gateway:
        first, second = (
            httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) for _ in range(2)
        )
        assert first.headers["x-ratelimit-remaining-tokens"] == str(10_000 - estimate)
        # the first request's hold was settled to its 70 tokens before the second reserved its own
        assert second.headers["x-ratelimit-remaining-tokens"] == str(10_000 - 70 - estimate)
