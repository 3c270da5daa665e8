"""The response cache over real HTTP: the official SDKs get a repeat answered from the cache — whole or
streamed, in the OpenAI, Anthropic and Gemini formats — with `x-ferryman-cache`, at $0 in the ledger
and the budgets, counted in the metric, kept apart per key unless shared, and shared across replicas
through a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as gtypes

from ferryman.errors import ConfigError
from ferryman.settings import settings_from_mapping
from ferryman.store.database import open_engine
from ferryman.store.sql_ledger import SqlLedger
from ferryman.testing import FakeOpenAI, Reply, Usage
from tests.conftest import RunningGateway, serve_gateway

KEY_A, KEY_B = "fm-cache-key-a", "fm-cache-key-b"
KEYS = [{"alias": "a", "key": KEY_A, "budget": {"daily_usd": 1.0}}, {"alias": "b", "key": KEY_B}]
PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 10.0}  # worst case ($0.04) fits the budget
ANSWER = "the cached answer"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        fake.script.set_default(Reply.text(ANSWER, chunks=3, usage=Usage(input_tokens=4, output_tokens=3)))
        yield fake


def config_for(fake: FakeOpenAI, **cache: Any) -> dict[str, Any]:
    deployment = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": fake.base_url,
        "api_key": "k",
        "price": PRICE,
    }
    return {
        "keys": KEYS,
        "cache": {"enabled": True, **cache},
        "models": [{"name": "chat", "deployments": [deployment]}],
    }


def prompt() -> list[dict[str, Any]]:
    """A prompt no other test sends (entries in a shared Redis outlive a test)."""
    return [{"role": "user", "content": f"question {uuid.uuid4().hex}"}]


def ask(gateway: RunningGateway, body: dict[str, Any], key: str = KEY_A, **headers: str) -> httpx.Response:
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "chat", "temperature": 0, **body},
        headers={"authorization": f"Bearer {key}", **headers},
    )
    assert response.status_code == 200, response.text
    return response


def cache_count(gateway: RunningGateway, result: str) -> float:
    value = gateway.metrics.registry.get_sample_value("ai_api_cache_requests_total", {"result": result})
    return value or 0.0


def test_a_repeat_is_answered_from_the_cache_at_no_cost(upstream: FakeOpenAI) -> None:
    with (
        serve_gateway(config_for(upstream)) as gateway,
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY_A, max_retries=0) as client,
    ):
        messages = prompt()
        raws = [
            client.chat.completions.with_raw_response.create(
                model="chat",
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
            )
            for _ in range(2)
        ]
        first, second = (raw.parse() for raw in raws)
        usage = httpx.get(gateway.url + "/v1/usage", headers={"authorization": f"Bearer {KEY_A}"}).json()
        hits, misses = cache_count(gateway, "hit"), cache_count(gateway, "miss")
    assert [raw.headers["x-ferryman-cache"] for raw in raws] == ["miss", "hit"]
    assert len(upstream.requests) == 1
    assert second.choices[0].message.content == first.choices[0].message.content == ANSWER
    assert second.usage is not None and second.usage.completion_tokens == 3  # the stored usage
    miss_cost = float(raws[0].headers["x-ferryman-cost-usd"])
    assert miss_cost > 0 and raws[1].headers["x-ferryman-cost-usd"] == "0"
    assert raws[1].headers["x-ferryman-deployment"] == "cache"
    # the budget counted the miss only: the hit's hold was settled at $0, and the ledger has both
    daily = usage["windows"]["daily"]
    assert daily["spent_usd"] == pytest.approx(miss_cost) and daily["reserved_usd"] == 0
    assert daily["requests"] == 2
    assert (hits, misses) == (1.0, 1.0)


def test_the_ledger_records_a_hit_at_zero_dollars(upstream: FakeOpenAI, tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'ferryman.db'}"
    with serve_gateway({**config_for(upstream), "database_url": database_url}) as gateway:
        body = {"messages": prompt()}
        ids = [ask(gateway, body).headers["x-request-id"] for _ in range(2)]

    async def entries() -> list[Any]:
        engine = open_engine(database_url)
        try:
            return await SqlLedger(engine).entries()
        finally:
            await engine.dispose()

    by_request = {entry.request_id: entry for entry in asyncio.run(entries())}
    miss, hit = (next(e for rid, e in by_request.items() if rid.startswith(i)) for i in ids)
    assert miss.provider == "openai" and miss.cost_usd is not None and miss.cost_usd > 0
    assert (hit.provider, hit.deployment, hit.cost_usd) == ("cache", "cache", 0.0)
    assert (hit.input_tokens, hit.output_tokens) == (4, 3)


def test_the_openai_sdk_stream_is_replayed(upstream: FakeOpenAI) -> None:
    with (
        serve_gateway(config_for(upstream)) as gateway,
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY_A, max_retries=0) as client,
    ):
        messages, texts, verdicts = prompt(), [], []
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
                model="chat",
                messages=messages,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            verdicts.append(raw.headers["x-ferryman-cache"])
            chunks = list(raw.parse())
            texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        whole = client.chat.completions.create(model="chat", messages=messages, temperature=0)  # type: ignore[arg-type]
    assert verdicts == ["miss", "hit"]
    assert texts == [ANSWER, ANSWER] and whole.choices[0].message.content == ANSWER
    assert len(upstream.requests) == 1  # the streamed answer, stored whole, answered the plain request too


def test_the_anthropic_sdk_stream_is_replayed(upstream: FakeOpenAI) -> None:
    with (
        serve_gateway(config_for(upstream)) as gateway,
        anthropic.Anthropic(base_url=gateway.url, api_key=KEY_A, max_retries=0) as client,
    ):
        question, texts, verdicts, finals = f"question {uuid.uuid4().hex}", [], [], []
        for _ in range(2):
            with client.messages.stream(
                model="chat",
                max_tokens=64,
                extra_body={"temperature": 0},  # this SDK's `stream` no longer names it
                messages=[{"role": "user", "content": question}],
            ) as stream:
                verdicts.append(stream.response.headers["x-ferryman-cache"])
                texts.append("".join(stream.text_stream))
                finals.append(stream.get_final_message())
    assert verdicts == ["miss", "hit"]
    assert texts == [ANSWER, ANSWER]
    assert [final.stop_reason for final in finals] == ["end_turn", "end_turn"]
    assert finals[1].usage.output_tokens == 3
    assert len(upstream.requests) == 1


def test_the_genai_sdk_stream_is_replayed(upstream: FakeOpenAI) -> None:
    with serve_gateway(config_for(upstream)) as gateway:
        client = genai.Client(api_key=KEY_A, http_options=gtypes.HttpOptions(base_url=gateway.url))
        question, texts = f"question {uuid.uuid4().hex}", []
        for _ in range(2):
            chunks = list(
                client.models.generate_content_stream(
                    model="chat", contents=question, config=gtypes.GenerateContentConfig(temperature=0)
                )
            )
            texts.append("".join(chunk.text or "" for chunk in chunks))
            assert chunks[-1].usage_metadata and chunks[-1].usage_metadata.candidates_token_count == 3
        hits, misses = cache_count(gateway, "hit"), cache_count(gateway, "miss")
    assert texts == [ANSWER, ANSWER]
    assert (hits, misses) == (1.0, 1.0)
    assert len(upstream.requests) == 1


def test_cache_control_opts_out(upstream: FakeOpenAI) -> None:
    with serve_gateway(config_for(upstream)) as gateway:
        body = {"messages": prompt()}
        verdicts = [
            ask(gateway, body, **{"cache-control": "no-store"}).headers["x-ferryman-cache"],  # not stored
            ask(gateway, body, **{"cache-control": "no-cache"}).headers["x-ferryman-cache"],  # stored
            ask(gateway, body).headers["x-ferryman-cache"],
            ask(gateway, body, **{"cache-control": "no-cache"}).headers["x-ferryman-cache"],  # not read
        ]
    assert verdicts == ["bypass", "bypass", "hit", "bypass"]
    assert len(upstream.requests) == 3


def test_sampled_requests_are_not_cached_by_default(upstream: FakeOpenAI) -> None:
    with serve_gateway(config_for(upstream)) as gateway:
        messages = prompt()
        sampled = [ask(gateway, {"messages": messages, "temperature": 0.8}) for _ in range(2)]
        unset = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "chat", "messages": messages},
            headers={"authorization": f"Bearer {KEY_A}"},
        )
    assert [r.headers["x-ferryman-cache"] for r in [*sampled, unset]] == ["bypass"] * 3
    assert len(upstream.requests) == 3


@pytest.mark.parametrize(("scope", "b_verdict"), [("key", "miss"), ("global", "hit")])
def test_entries_are_kept_per_key_unless_the_scope_shares_them(
    upstream: FakeOpenAI, scope: str, b_verdict: str
) -> None:
    with serve_gateway(config_for(upstream, scope=scope)) as gateway:
        body = {"messages": prompt()}
        ask(gateway, body, KEY_A)
        verdict = ask(gateway, body, KEY_B).headers["x-ferryman-cache"]
    assert verdict == b_verdict
    assert len(upstream.requests) == (2 if b_verdict == "miss" else 1)


def test_a_model_can_turn_the_cache_off_or_keep_its_own_ttl(upstream: FakeOpenAI) -> None:
    config = config_for(upstream)
    config["models"][0]["cache"] = {"enabled": False}
    with serve_gateway(config) as gateway:
        body = {"messages": prompt()}
        responses = [ask(gateway, body) for _ in range(2)]
    assert all("x-ferryman-cache" not in r.headers for r in responses)
    assert len(upstream.requests) == 2


def test_the_memory_backend_is_bounded_by_max_bytes(upstream: FakeOpenAI) -> None:
    # one stored entry is ~110 bytes: a 180-byte cache keeps one, the least recently used going first
    with serve_gateway(config_for(upstream, max_bytes=180)) as gateway:
        first, second = {"messages": prompt()}, {"messages": prompt()}
        ask(gateway, first)
        ask(gateway, second)
        verdicts = [
            ask(gateway, second).headers["x-ferryman-cache"],
            ask(gateway, first).headers["x-ferryman-cache"],
        ]
    assert verdicts == ["hit", "miss"]


def test_replicas_share_hits_through_redis(upstream: FakeOpenAI, redis_url: str) -> None:
    config = {**config_for(upstream, backend="redis"), "redis_url": redis_url}
    with serve_gateway(config) as one, serve_gateway(config) as two:
        body = {"messages": prompt()}
        verdicts = [ask(one, body).headers["x-ferryman-cache"], ask(two, body).headers["x-ferryman-cache"]]
        streamed = httpx.post(
            two.url + "/v1/chat/completions",
            json={"model": "chat", "temperature": 0, "stream": True, **body},
            headers={"authorization": f"Bearer {KEY_A}"},
        )
    assert verdicts == ["miss", "hit"]
    assert streamed.headers["x-ferryman-cache"] == "hit" and ANSWER.split()[0] in streamed.text
    assert len(upstream.requests) == 1


def test_the_redis_backend_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({"cache": {"enabled": True, "backend": "redis"}})
    assert "redis_url" in str(refused.value)
