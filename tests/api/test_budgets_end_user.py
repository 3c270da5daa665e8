"""End-user budgets over real HTTP: a key's default end-user budget refuses one end user (named by
`x-ferryman-end-user`) while another end user of the same key (named by OpenAI's `user`) is served."""

from __future__ import annotations

import openai
import pytest

from ferryman.testing import FakeOpenAI, Reply, Usage
from tests.api.fleet import openai_deployment
from tests.conftest import serve_gateway

HELLO = [{"role": "user", "content": "hi"}]
PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 1000.0}  # $0.001 per output token: budgets fill fast


def test_a_keys_default_end_user_budget_refuses_one_end_user_and_serves_another() -> None:
    with FakeOpenAI() as upstream:
        upstream.script.set_default(
            Reply.text("ok", usage=Usage(input_tokens=1, output_tokens=10))
        )  # $0.010001 each
        deployment = openai_deployment(upstream, PRICE)
        key = {
            "alias": "consumer-app",
            "key": "fm-consumer-key",
            "end_user_budget": {"daily_usd": 0.025},  # two requests per end user, not three
            "end_user_budgets": {"vip": {"daily_usd": 1}},
        }
        config = {
            "keys": [key],
            "budgets": {"end_user": {"daily_usd": 0.001}},  # the gateway's default: the key's beats it
            "models": [{"name": "chat", "deployments": [deployment]}],
        }
        with (
            serve_gateway(config) as gateway,
            openai.OpenAI(base_url=gateway.url + "/v1", api_key="fm-consumer-key", max_retries=2) as client,
        ):

            def ask(user: str | None = None, header: str | None = None) -> str | None:
                answer = client.chat.completions.create(
                    model="chat",
                    messages=HELLO,  # type: ignore[arg-type]
                    max_tokens=10,
                    extra_headers={"x-ferryman-end-user": header} if header is not None else None,
                    user=user if user is not None else openai.omit,
                )
                content: str | None = answer.choices[0].message.content
                return content

            assert [ask(header="ana"), ask(header="ana")] == ["ok", "ok"]
            with pytest.raises(openai.RateLimitError) as refused:
                ask(header="ana")
            assert [ask(user="bo"), ask(user="bo")] == ["ok", "ok"]  # bo's budget is bo's own
            assert [ask(user="vip") for _ in range(3)] == ["ok"] * 3  # past the default: an own budget
            with pytest.raises(openai.RateLimitError):
                ask(user="bo")
    error = refused.value
    assert error.code == "budget_exceeded" and error.type == "insufficient_quota"
    assert "daily budget of end_user 'ana'" in error.message
    assert len(upstream.requests) == 7  # the refused requests never reached the upstream
