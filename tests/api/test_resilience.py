"""Retries, fallback models and timeouts over real HTTP: fake providers inject the faults, the official
SDKs (with their own retries off) see exactly one well-formed answer or one error per request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer, Reply
from tests.conftest import RunningGateway, serve_gateway

HELLO: Any = [{"role": "user", "content": "hi"}]
UPSTREAM_MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
FAKES: dict[str, type[FakeServer]] = {"openai": FakeOpenAI, "anthropic": FakeAnthropic, "gemini": FakeGemini}


def deployment(fake: FakeServer, name: str, provider: str = "openai", **extra: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": UPSTREAM_MODEL[provider],
        "api_base": fake.base_url,
        "api_key": "up-key",
        "name": name,
        **extra,
    }


def model(name: str, *deployments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    weighted = [{**d, "weight": 1 if i == 0 else 0} for i, d in enumerate(deployments)]
    return {"name": name, "deployments": weighted, **extra}


@pytest.fixture
def primary() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def spare() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def openai_client(gateway: RunningGateway, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, **options)


# --- retries -------------------------------------------------------------------------------------


def test_a_429_is_retried_after_its_retry_after_and_the_client_sees_one_answer(primary: FakeOpenAI) -> None:
    primary.script.reply(Reply.error(429, "slow down", headers={"retry-after": "0.4"}))
    with serve_gateway({"models": [model("chat", deployment(primary, "p"))]}) as gateway:
        started = time.monotonic()
        with openai_client(gateway) as client:
            reply = client.chat.completions.create(model="chat", messages=HELLO)
        assert time.monotonic() - started >= 0.4
    assert reply.choices[0].message.content == "echo: hi"
    assert len(primary.requests) == 2


def test_a_retry_after_given_as_an_http_date_is_honoured(primary: FakeOpenAI) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=1), usegmt=True)
    primary.script.reply(Reply.error(503, "later", headers={"retry-after": when}))
    with serve_gateway({"models": [model("chat", deployment(primary, "p"))]}) as gateway:
        with openai_client(gateway) as client:
            reply = client.chat.completions.create(model="chat", messages=HELLO)
    assert reply.choices[0].message.content == "echo: hi"
    assert len(primary.requests) == 2


def test_a_retry_after_past_the_cap_goes_to_the_next_deployment_at_once(
    primary: FakeOpenAI, spare: FakeOpenAI
) -> None:
    primary.script.set_default(Reply.error(429, "come back in an hour", headers={"retry-after": "3600"}))
    config = {"models": [model("chat", deployment(primary, "p"), deployment(spare, "s"))]}
    with serve_gateway(config) as gateway, openai_client(gateway) as client:
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO)
        assert time.monotonic() - started < 2
    assert raw.headers["x-ferryman-deployment"] == "s"
    assert len(primary.requests) == 1 and len(spare.requests) == 1


@pytest.mark.parametrize(
    "fault",
    [Reply.error(500, "boom"), Reply.error(503, "busy"), Reply.drop(), Reply.echo(delay=2)],
    ids=["500", "503", "dropped-connection", "read-timeout"],
)
def test_a_transient_failure_is_retried_on_the_same_deployment(primary: FakeOpenAI, fault: Reply) -> None:
    primary.script.reply(fault)
    fast = {"connect": 1, "read": 0.5, "total": 5}
    with serve_gateway({"models": [model("chat", deployment(primary, "p", timeouts=fast))]}) as gateway:
        with openai_client(gateway) as client:
            reply = client.chat.completions.create(model="chat", messages=HELLO)
    assert reply.choices[0].message.content == "echo: hi"
    assert len(primary.requests) == 2


def test_every_ingress_format_gets_the_retried_answer(primary: FakeOpenAI) -> None:
    primary.script.reply(Reply.error(500, "boom"), Reply.echo(), times=3)
    with serve_gateway({"models": [model("chat", deployment(primary, "p"))]}) as gateway:
        with openai_client(gateway) as client:
            assert client.chat.completions.create(model="chat", messages=HELLO).choices[0].message.content
        with anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0) as claude:
            message = claude.messages.create(model="chat", max_tokens=10, messages=HELLO)
            assert message.content[0].type == "text" and message.content[0].text == "echo: hi"
        gemini = genai.Client(api_key="unused", http_options=gtypes.HttpOptions(base_url=gateway.url))
        assert gemini.models.generate_content(model="chat", contents="hi").text == "echo: hi"
    assert len(primary.requests) == 6


def test_the_retry_gives_up_with_the_upstream_error_when_it_fails_again(primary: FakeOpenAI) -> None:
    primary.script.set_default(Reply.error(503, "still down"))
    with serve_gateway({"models": [model("chat", deployment(primary, "p"))]}) as gateway:
        with openai_client(gateway) as client, pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="chat", messages=HELLO)
    assert caught.value.status_code == 502 and "still down" in caught.value.message
    assert len(primary.requests) == 2


def test_a_stream_is_retried_before_its_first_byte(primary: FakeOpenAI) -> None:
    primary.script.reply(Reply.error(429, "slow down", headers={"retry-after": "0.1"}))
    primary.script.set_default(Reply.text("one two three", chunks=3))
    with serve_gateway({"models": [model("chat", deployment(primary, "p"))]}) as gateway:
        with openai_client(gateway) as client:
            stream = client.chat.completions.create(model="chat", messages=HELLO, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "one two three"
    assert len(primary.requests) == 2


def test_a_stream_that_fails_after_its_first_byte_is_not_retried(
    primary: FakeOpenAI, spare: FakeOpenAI
) -> None:
    primary.script.reply(Reply.drop(after_chunks=2, text="w1 w2 w3 w4 w5 w6", chunks=6))
    config = {"models": [model("chat", deployment(primary, "p"), deployment(spare, "s"))]}
    received = ""
    with serve_gateway(config) as gateway, openai_client(gateway) as client:
        with pytest.raises(openai.APIError):
            for chunk in client.chat.completions.create(model="chat", messages=HELLO, stream=True):
                if chunk.choices:
                    received += chunk.choices[0].delta.content or ""
    assert received and "w6" not in received
    assert len(primary.requests) == 1 and spare.requests == []


# --- fallback models ----------------------------------------------------------------------------


def test_a_fallback_model_answers_and_the_headers_name_it(primary: FakeOpenAI, spare: FakeOpenAI) -> None:
    primary.script.set_default(Reply.error(503, "down"))
    config = {
        "models": [
            model("chat", deployment(primary, "p"), fallbacks=["backup"]),
            model("backup", deployment(spare, "s")),
        ]
    }
    with serve_gateway(config) as gateway, openai_client(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO)
        exported = gateway.metrics.render_latest().decode()
    reply = raw.parse()
    assert reply.choices[0].message.content == "echo: hi"
    assert reply.model == "chat"  # the body keeps the client's name
    assert raw.headers["x-ferryman-model"] == "backup" and raw.headers["x-ferryman-deployment"] == "s"
    assert len(primary.requests) == 2 and len(spare.requests) == 1
    assert 'ai_api_upstream_attempts_total{model="backup",provider="openai"} 1.0' in exported


REFUSALS = {
    "openai": Reply.error(
        400,
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 200000 tokens.",
        error_type="invalid_request_error",
        code="context_length_exceeded",
    ),
    "anthropic": Reply.error(
        400, "prompt is too long: 210000 tokens > 200000 maximum", error_type="invalid_request_error"
    ),
    "gemini": Reply.error(
        400, "The input token count (2000000) exceeds the maximum number of tokens allowed (1048576)."
    ),
}


@pytest.mark.parametrize("provider", sorted(REFUSALS))
def test_a_context_window_refusal_falls_back_to_the_next_model_at_once(
    provider: str, spare: FakeOpenAI
) -> None:
    with FAKES[provider]() as small:
        small.script.reply(REFUSALS[provider])
        config = {
            "models": [
                model(
                    "small", deployment(small, "small-1", provider), deployment(small, "small-2", provider)
                ),
                model("large", deployment(spare, "large-1")),
            ]
        }
        with serve_gateway(config) as gateway, openai_client(gateway) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="small", messages=HELLO, extra_headers={"x-ferryman-fallbacks": "large"}
            )
        assert len(small.requests) == 1  # not retried, and not sent to the model's other deployment
    assert raw.headers["x-ferryman-model"] == "large"
    assert len(spare.requests) == 1


def test_a_content_policy_refusal_falls_back_to_the_configured_model(
    primary: FakeOpenAI, spare: FakeOpenAI
) -> None:
    primary.script.reply(
        Reply.error(
            400,
            "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            code="content_filter",
        )
    )
    config = {
        "models": [
            model("strict", deployment(primary, "p"), fallbacks=["lenient"]),
            model("lenient", deployment(spare, "s")),
        ]
    }
    with serve_gateway(config) as gateway, openai_client(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(model="strict", messages=HELLO)
    assert raw.headers["x-ferryman-model"] == "lenient"
    assert len(primary.requests) == 1 and len(spare.requests) == 1


def test_a_context_window_refusal_without_a_fallback_keeps_openais_code(primary: FakeOpenAI) -> None:
    primary.script.reply(REFUSALS["openai"])
    with serve_gateway({"models": [model("chat", deployment(primary, "p"))]}) as gateway:
        with openai_client(gateway) as client, pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="chat", messages=HELLO)
    assert caught.value.code == "context_length_exceeded"


def fallback_config(primary: FakeOpenAI, spare: FakeOpenAI, **key: Any) -> dict[str, Any]:
    primary.script.set_default(Reply.error(500, "down"))
    config: dict[str, Any] = {
        "models": [
            model("chat", deployment(primary, "p")),
            model("backup", deployment(spare, "s")),
            model("other", deployment(spare, "o")),
        ],
        "retries": {"max_attempts_per_deployment": 1},
    }
    if key:
        config |= {
            "master_key": "sk-master-0123456789",
            "keys": [{"alias": "app", "key": "fm-app-key", **key}],
        }
    return config


def test_per_request_fallbacks_by_header_work_for_every_ingress_format(
    primary: FakeOpenAI, spare: FakeOpenAI
) -> None:
    header = {"x-ferryman-fallbacks": "backup"}
    with serve_gateway(fallback_config(primary, spare)) as gateway:
        with openai_client(gateway) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="chat", messages=HELLO, extra_headers=header
            )
            assert raw.headers["x-ferryman-model"] == "backup"
        with anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0) as claude:
            raw_message = claude.messages.with_raw_response.create(
                model="chat", max_tokens=10, messages=HELLO, extra_headers=header
            )
            assert raw_message.headers["x-ferryman-model"] == "backup"
        options = gtypes.HttpOptions(base_url=gateway.url, headers=header)
        gemini = genai.Client(api_key="unused", http_options=options)
        assert gemini.models.generate_content(model="chat", contents="hi").text == "echo: hi"
    assert len(spare.requests) == 3


def test_per_request_fallbacks_in_an_openai_body_are_not_sent_upstream(
    primary: FakeOpenAI, spare: FakeOpenAI
) -> None:
    with serve_gateway(fallback_config(primary, spare)) as gateway, openai_client(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=HELLO, extra_body={"fallbacks": ["other"], "timeout": 30}
        )
    assert raw.headers["x-ferryman-deployment"] == "o"
    for fake in (primary, spare):
        for recorded in fake.requests:
            assert "fallbacks" not in recorded.body and "timeout" not in recorded.body


def test_an_unknown_fallback_model_is_a_400_in_the_openai_shape(
    primary: FakeOpenAI, spare: FakeOpenAI
) -> None:
    with serve_gateway(fallback_config(primary, spare)) as gateway:
        answer = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "chat", "messages": HELLO},
            headers={"x-ferryman-fallbacks": "no-such-model"},
        )
        body_answer = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "chat", "messages": HELLO, "fallbacks": "backup"},
        )
    assert answer.status_code == 400
    assert (
        answer.json()["error"]["param"] == "fallbacks"
        and "no-such-model" in answer.json()["error"]["message"]
    )
    assert body_answer.status_code == 400 and body_answer.json()["error"]["param"] == "fallbacks"
    assert primary.requests == []  # refused before any attempt


def test_a_fallback_model_the_key_may_not_use_is_skipped(primary: FakeOpenAI, spare: FakeOpenAI) -> None:
    with serve_gateway(fallback_config(primary, spare, models=["chat", "other"])) as gateway:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="fm-app-key", max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="chat", messages=HELLO, extra_headers={"x-ferryman-fallbacks": "backup,other"}
            )
    assert raw.headers["x-ferryman-model"] == "other"  # `backup` was skipped, not tried


# --- timeouts -----------------------------------------------------------------------------------


def test_the_models_timeout_ends_the_request_with_a_504_in_every_format(primary: FakeOpenAI) -> None:
    primary.script.set_default(Reply.echo(delay=5))
    with serve_gateway({"models": [model("chat", deployment(primary, "p"), timeout_seconds=0.5)]}) as gateway:
        started = time.monotonic()
        with openai_client(gateway) as client, pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="chat", messages=HELLO)
        assert time.monotonic() - started < 2.5
        assert caught.value.status_code == 504 and caught.value.code == "request_timeout"
        with anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0) as claude:
            with pytest.raises(anthropic.APIStatusError) as refused:
                claude.messages.create(model="chat", max_tokens=10, messages=HELLO)
        assert refused.value.status_code == 504
        assert refused.value.body["error"]["type"] == "timeout_error"  # type: ignore[index]
        gemini = genai.Client(api_key="unused", http_options=gtypes.HttpOptions(base_url=gateway.url))
        with pytest.raises(genai_errors.APIError) as failed:
            gemini.models.generate_content(model="chat", contents="hi")
        assert failed.value.code == 504 and failed.value.status == "DEADLINE_EXCEEDED"


def test_a_request_may_shorten_the_timeout_by_header_or_body(primary: FakeOpenAI) -> None:
    primary.script.set_default(Reply.echo(delay=5))
    with serve_gateway({"models": [model("chat", deployment(primary, "p"), timeout_seconds=30)]}) as gateway:
        with openai_client(gateway) as client:
            for options in (
                {"extra_headers": {"x-ferryman-timeout": "0.3"}},
                {"extra_body": {"timeout": 0.3}},
            ):
                started = time.monotonic()
                with pytest.raises(openai.APIStatusError) as caught:
                    client.chat.completions.create(model="chat", messages=HELLO, **options)
                assert caught.value.status_code == 504
                assert time.monotonic() - started < 2


def test_a_request_cannot_lengthen_the_models_timeout(primary: FakeOpenAI) -> None:
    primary.script.set_default(Reply.echo(delay=5))
    with serve_gateway({"models": [model("chat", deployment(primary, "p"), timeout_seconds=0.3)]}) as gateway:
        started = time.monotonic()
        answer = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "chat", "messages": HELLO},
            headers={"x-ferryman-timeout": "60"},
        )
    assert answer.status_code == 504 and time.monotonic() - started < 2


def test_a_bad_timeout_header_is_a_400_naming_it(primary: FakeOpenAI) -> None:
    with serve_gateway({"models": [model("chat", deployment(primary, "p"))]}) as gateway:
        for value in ["soon", "0", "-1", "nan", "inf", "1e9", ""]:
            answer = httpx.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "chat", "messages": HELLO},
                headers={"x-ferryman-timeout": value},
            )
            assert answer.status_code == 400, value
            assert answer.json()["error"]["param"] == "x-ferryman-timeout"
        body_answer = httpx.post(
            gateway.url + "/v1/chat/completions", json={"model": "chat", "messages": HELLO, "timeout": 0}
        )
        assert body_answer.status_code == 400 and body_answer.json()["error"]["param"] == "timeout"
    assert primary.requests == []


def test_a_stream_slow_to_its_first_token_is_served_by_the_next_deployment(
    primary: FakeOpenAI, spare: FakeOpenAI
) -> None:
    primary.script.set_default(Reply.text("late words", chunks=2, delay=3))
    spare.script.set_default(Reply.text("quick words", chunks=2))
    config = {
        "models": [
            model("chat", deployment(primary, "p"), deployment(spare, "s"), first_token_timeout_seconds=0.3)
        ]
    }
    with serve_gateway(config) as gateway, openai_client(gateway) as client:
        started = time.monotonic()
        with client.chat.completions.with_streaming_response.create(
            model="chat", messages=HELLO, stream=True
        ) as response:
            assert response.headers["x-ferryman-deployment"] == "s"
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
            )
        assert time.monotonic() - started < 2.5
    assert text == "quick words"
    assert len(primary.requests) == 1  # a slow start is not retried on the same deployment


def test_a_stream_past_its_deadline_ends_with_one_timeout_error(primary: FakeOpenAI) -> None:
    # Words every 0.5 s against a 2 s deadline: the first ones arrive with room to spare on a busy
    # machine, and the last one (at 4 s) never can.
    primary.script.set_default(Reply.text("w1 w2 w3 w4 w5 w6 w7 w8", chunks=8, chunk_delay=0.5))
    received = ""
    with serve_gateway({"models": [model("chat", deployment(primary, "p"), timeout_seconds=2.0)]}) as gateway:
        with openai_client(gateway) as client, pytest.raises(openai.APIError) as caught:
            for chunk in client.chat.completions.create(model="chat", messages=HELLO, stream=True):
                if chunk.choices:
                    received += chunk.choices[0].delta.content or ""
    assert received and "w8" not in received  # the first words, then the error: one stream, cut once
    assert "timeout" in caught.value.message
    assert len(primary.requests) == 1
