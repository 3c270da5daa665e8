"""Budgets over real HTTP: the OpenAI SDK sees insufficient_quota, the refused request never reaches the
upstream, spend shows in the headers, and alerts reach a webhook once per threshold."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest

from ferryman.testing import FakeOpenAI, Reply, Usage
from tests.conftest import serve_gateway

HELLO = [{"role": "user", "content": "hi"}]
PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 1000.0}  # $0.001 per output token: budgets fill fast


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local receiver that records every alert posted to it."""
    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_budget_refuses_with_insufficient_quota_and_alerts_once(
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, alerts = webhook
    with FakeOpenAI() as upstream:
        upstream.script.set_default(
            Reply.text("ok", usage=Usage(input_tokens=1, output_tokens=10))
        )  # $0.010001
        deployment = {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "api_base": upstream.base_url,
            "api_key": "k",
            "price": PRICE,
        }
        config = {
            "keys": [{"alias": "budgeted", "key": "fm-budget-key", "budget": {"daily_usd": 0.05}}],
            "budgets": {"alert_webhook_url": url},
            "models": [{"name": "chat", "deployments": [deployment]}],
        }
        with (
            serve_gateway(config) as gateway,
            openai.OpenAI(base_url=gateway.url + "/v1", api_key="fm-budget-key", max_retries=2) as client,
        ):
            costs = []
            for _ in range(4):  # each reserves its worst case (max_tokens 10: $0.0100 + input)
                raw = client.chat.completions.with_raw_response.create(
                    model="chat", messages=HELLO, max_tokens=10
                )  # type: ignore[arg-type]
                costs.append(float(raw.headers["x-ferryman-cost-usd"]))
            with pytest.raises(openai.RateLimitError) as refused:
                client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10)  # type: ignore[arg-type]
            deadline = time.monotonic() + 5
            while len(alerts) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    error = refused.value
    assert error.code == "budget_exceeded" and error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"  # so the SDK did not retry it
    assert "daily budget of key 'budgeted'" in error.message
    assert len(upstream.requests) == 4  # four served; the refused one never reached the upstream
    assert sum(costs) <= 0.05
    # 80 % by spend (4 x $0.010001 of $0.05); 100 % by the refusal, since spend alone never gets there
    assert sorted((a["threshold"], a["window"], a["scope"]) for a in alerts) == [  # deliveries race
        (0.8, "daily", "key"),
        (1.0, "daily", "key"),
    ]
    by_threshold = {a["threshold"]: a for a in alerts}
    assert all("budgeted" in a["text"] for a in alerts)
    assert by_threshold[1.0]["spent_usd"] == pytest.approx(sum(costs))


def test_usage_reports_the_keys_own_spend_from_the_embedded_ledger(tmp_path: Any) -> None:
    deployment = {"provider": "fake", "model": "fake-model", "price": PRICE}
    config = {
        "data_dir": str(tmp_path),
        "keys": [{"alias": "mine", "key": "fm-mine"}, {"alias": "other", "key": "fm-other"}],
        "models": [{"name": "chat", "deployments": [deployment]}],
    }
    with serve_gateway(config) as gateway:
        headers = {"authorization": "Bearer fm-mine"}
        costs = [
            float(
                httpx.post(
                    gateway.url + "/v1/chat/completions",
                    json={"model": "chat", "messages": HELLO},
                    headers=headers,
                ).headers["x-ferryman-cost-usd"]
            )
            for _ in range(3)
        ]
        httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "chat", "messages": HELLO},
            headers={"authorization": "Bearer fm-other"},
        )
        usage = httpx.get(gateway.url + "/v1/usage", headers=headers).json()
        anonymous = httpx.get(gateway.url + "/v1/usage")
    daily = usage["windows"]["daily"]
    assert usage["key"]["alias"] == "mine"
    assert daily["requests"] == 3  # only its own
    assert daily["spent_usd"] == pytest.approx(sum(costs), abs=1e-12)
    assert daily["budget_usd"] is None
    assert anonymous.status_code == 401
