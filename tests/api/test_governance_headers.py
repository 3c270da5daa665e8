"""What every answer says about itself: model, deployment and cost, as headers or a stream's comment."""

from __future__ import annotations

from typing import Any

import httpx
import openai

PRICE = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
CONFIG = {
    "models": [
        {"name": "m", "deployments": [{"provider": "fake", "model": "m", "name": "fake-a", "price": PRICE}]}
    ]
}
BODY = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}


def test_a_whole_answer_names_its_deployment_and_cost(gateway_factory: Any) -> None:
    gateway = gateway_factory(CONFIG)
    response = httpx.post(gateway.url + "/v1/chat/completions", json=BODY)
    usage = response.json()["usage"]
    assert response.headers["x-ferryman-model"] == "m"
    assert response.headers["x-ferryman-deployment"] == "fake-a"
    expected = (usage["prompt_tokens"] * 2.0 + usage["completion_tokens"] * 8.0) / 1e6
    assert float(response.headers["x-ferryman-cost-usd"]) == expected


def test_a_stream_carries_its_cost_as_a_comment_the_sdk_skips(gateway_factory: Any) -> None:
    gateway = gateway_factory(CONFIG)
    stream_body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=stream_body) as response:
        text = "".join(response.iter_text())
    assert "x-ferryman-cost-usd" not in response.headers  # unknown when the headers left
    comment = next(line for line in text.splitlines() if line.startswith(": ferryman-cost-usd="))
    assert text.index(comment) < text.index("data: [DONE]")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
        chunks = list(client.chat.completions.create(**stream_body))  # type: ignore[call-overload]
    usage = chunks[-1].usage
    assert (
        float(comment.split("=", 1)[1]) == (usage.prompt_tokens * 2.0 + usage.completion_tokens * 8.0) / 1e6
    )


def test_an_anthropic_stream_carries_the_comment_too(gateway_factory: Any) -> None:
    gateway = gateway_factory(CONFIG)
    body = {**BODY, "max_tokens": 20, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body) as response:
        text = "".join(response.iter_text())
    assert ": ferryman-cost-usd=" in text
