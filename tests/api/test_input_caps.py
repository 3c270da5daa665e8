"""Input caps: more messages, tools, images, max_tokens or embedding inputs than a model allows is a 400
naming the field, in each ingress format's own error shape, before any rate limit counts the request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ferryman.errors import ConfigError
from ferryman.settings import InputCaps, settings_from_mapping
from tests.conftest import RunningGateway, serve_gateway

MASTER = "sk-caps-master-0123456789abcdef"
PIXEL = "data:image/png;base64,iVBORw0KGgo="
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    config = {
        "input_caps": {"max_messages": 4, "max_tools": 2, "max_images": 1, "max_embedding_inputs": 3},
        "limits": {"global": {"rpm": 1000}},
        "models": [
            {"name": "small", "deployments": [{"provider": "fake", "model": "small"}]},
            {
                "name": "bounded",
                "input_caps": {"max_tokens": 100, "max_messages": 2},
                "deployments": [{"provider": "fake", "model": "bounded"}],
            },
            {"name": "embed", "deployments": [{"provider": "fake", "model": "fake-embedding"}]},
        ],
    }
    with serve_gateway(config) as running:
        yield running


def chat(gateway: RunningGateway, **body: Any) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", json={"model": "small", **body}, timeout=10)


def user(text: str = "hi", *parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}, *parts]}


def assert_refused(response: httpx.Response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "request_too_large")
    return str(error["message"])


def test_requests_at_the_caps_are_served(gateway: RunningGateway) -> None:
    image = {"type": "image_url", "image_url": {"url": PIXEL}}
    response = chat(gateway, messages=[user("a", image), user(), user(), user()], tools=[TOOL, TOOL])
    assert response.status_code == 200, response.text


def test_each_cap_names_its_field(gateway: RunningGateway) -> None:
    image = {"type": "image_url", "image_url": {"url": PIXEL}}
    assert "5, over this model's cap of 4" in assert_refused(chat(gateway, messages=[user()] * 5), "messages")
    assert_refused(chat(gateway, messages=[user()], tools=[TOOL] * 3), "tools")
    assert "images" in assert_refused(chat(gateway, messages=[user("a", image, image)]), "messages")
    embed = httpx.post(
        gateway.url + "/v1/embeddings", json={"model": "embed", "input": ["a"] * 4}, timeout=10
    )
    assert_refused(embed, "input")


def test_a_models_own_caps_override_the_gateways_fields_it_sets(gateway: RunningGateway) -> None:
    bounded = {"model": "bounded"}
    assert_refused(chat(gateway, **bounded, messages=[user()], max_tokens=101), "max_tokens")
    assert_refused(chat(gateway, **bounded, messages=[user()] * 3), "messages")
    assert chat(gateway, **bounded, messages=[user()], max_tokens=100).status_code == 200
    # The gateway's tool cap still applies to it: the model set only max_tokens and max_messages.
    assert_refused(chat(gateway, **bounded, messages=[user()], tools=[TOOL] * 3), "tools")


def test_the_sdks_see_the_refusal_in_their_own_format(gateway: RunningGateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="small", max_tokens=10, messages=[{"role": "user", "content": "x"}] * 5)
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    gemini = httpx.post(
        gateway.url + "/v1beta/models/small:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "x"}]}] * 5},
        timeout=10,
    )
    assert gemini.status_code == 400 and gemini.json()["error"]["status"] == "INVALID_ARGUMENT"
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="small", messages=[{"role": "user", "content": "x"}] * 5
        )


def test_a_refused_request_costs_no_rate_limit(gateway: RunningGateway) -> None:
    def remaining() -> int:
        response = chat(gateway, messages=[user()])
        assert response.status_code == 200
        return int(response.headers["x-ratelimit-remaining-requests"])

    first = remaining()
    for _ in range(3):
        refused = chat(gateway, messages=[user()] * 5)
        assert_refused(refused, "messages")
        assert "x-ratelimit-remaining-requests" not in refused.headers
    assert remaining() == first - 1  # only the two served requests counted


def test_the_defaults_only_stop_abuse_and_caps_are_validated() -> None:
    defaults = InputCaps()
    assert (defaults.max_messages, defaults.max_tools, defaults.max_tokens) == (5_000, 512, None)
    settings = settings_from_mapping(
        {
            "input_caps": {"max_tools": 8},
            "models": [
                {
                    "name": "m",
                    "input_caps": {"max_tokens": 5},
                    "deployments": [{"provider": "fake", "model": "m"}],
                }
            ],
        }
    )
    merged = settings.input_caps.over(settings.models[0].input_caps)
    assert (merged.max_tools, merged.max_tokens, merged.max_messages) == (8, 5, 5_000)
    with pytest.raises(ConfigError, match=r"input_caps\.max_messages"):
        settings_from_mapping({"input_caps": {"max_messages": 0}})
