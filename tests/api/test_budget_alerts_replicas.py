"""The money issue's acceptance, at the gateway: three replicas on one Redis and one PostgreSQL announce
each budget threshold once per window (log line, metric, Slack-compatible webhook retried until it is
taken), and `ai_api_cost_total` across the replicas adds up to exactly what the spend ledger holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ferryman.testing import FakeAnthropic, FakeOpenAI, Reply, Usage
from tests.api.fleet import burst, openai_deployment, worst_case_upstream
from tests.api.replicas import gateway_processes
from tests.store.fixtures import fresh_postgres_database, throwaway_redis

pytestmark = pytest.mark.slow
MASTER = "sk-alerts-master"
FIRST, SECOND = "fm-alerts-first-key", "fm-alerts-second-key"
BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "bill me please"}],
    "max_tokens": 10,
}
CROSSED = "budget threshold crossed"


@dataclass
class AlertReceiver:
    """A Slack-style incoming webhook on loopback that turns away each alert's first delivery with a
    503, so every alert it takes has also proved the gateway's retry.

    `attempts` holds every POST as (JSON body, content type, status answered); `taken` the accepted."""

    url: str = ""
    attempts: list[tuple[dict[str, Any], str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def receive(self, body: dict[str, Any], content_type: str) -> int:
        with self.lock:
            seen = any(_alert_id(earlier) == _alert_id(body) for earlier, _, _ in self.attempts)
            status = 200 if seen else 503
            self.attempts.append((body, content_type, status))
            return status

    @property
    def taken(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for body, _, status in self.attempts if status == 200]

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` alerts are taken; then a quiet second, so a late duplicate is counted too."""
        deadline = time.monotonic() + timeout
        while len(self.taken) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)


def _alert_id(body: dict[str, Any]) -> tuple[str, str, float]:
    return body.get("budget", ""), body.get("window", ""), body.get("threshold", 0.0)


@contextlib.contextmanager
def alert_receiver() -> Iterator[AlertReceiver]:
    """Serve an `AlertReceiver` from a thread on a free loopback port until the block ends."""
    receiver = AlertReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["content-length"]))
            status = receiver.receive(json.loads(raw), self.headers.get("content-type", ""))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/budget"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def fleet(
    stack: contextlib.ExitStack, tmp_path: Path, postgres_admin: str, config: dict[str, Any]
) -> list[str]:
    """Three `ferryman serve` processes for `config` on a fresh Redis and PostgreSQL; their base URLs."""
    config = {
        **config,
        "master_key": MASTER,
        "redis_url": stack.enter_context(throwaway_redis()),
        "database_url": stack.enter_context(fresh_postgres_database(postgres_admin)),
        "server": {"shutdown_delay_seconds": 0},
    }
    return [url for _, url in gateway_processes(stack, config, tmp_path)]


def samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` on one replica's /metrics, as (labels, value)."""
    text = httpx.get(url + "/metrics").text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _level(url: str) -> float:
    """One replica's `ai_api_budget_utilization_ratio` for daily key budgets (0 before any settle)."""
    found = samples(url, "ai_api_budget_utilization_ratio")
    return max(
        (value for labels, value in found if labels == {"scope": "key", "window": "daily"}), default=0.0
    )


def fleet_total(urls: list[str], name: str, **labels: str) -> float:
    """The sum over the replicas of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for url in urls
        for found, value in samples(url, name)
        if all(found.get(label) == wanted for label, wanted in labels.items())
    )


def logged_crossings(tmp_path: Path) -> list[dict[str, Any]]:
    """The replicas' "budget threshold crossed" JSON log lines (gateway_process keeps their output)."""
    lines = []
    for log in sorted(tmp_path.glob("gateway-*.log")):
        for line in log.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("message") == CROSSED:
                    lines.append(record)
    return lines


def test_each_threshold_is_announced_once_per_budget_across_three_replicas(
    tmp_path: Path, postgres_admin: str
) -> None:
    # Every answer spends exactly its reserved worst case, so a budget fills to exactly 100 %. The first
    # key's holds 25 requests: 21 at once cross 80 % (on the 20th) with settles racing on three replicas;
    # three more, one per replica, make every replica read a level past 80 %; of 15 more at once, one
    # fits and reaches 100 %. The second key's holds one request, which jumps from 0 past both at once.
    with contextlib.ExitStack() as stack:
        upstream, each = stack.enter_context(worst_case_upstream(BODY, delay=0.5))
        receiver = stack.enter_context(alert_receiver())
        deployment = openai_deployment(upstream)
        config = {
            "keys": [
                {"alias": "first", "key": FIRST, "budget": {"daily_usd": 25 * each}},
                {"alias": "second", "key": SECOND, "budget": {"daily_usd": each}},
            ],
            "budgets": {"alert_thresholds": [0.8, 1.0], "alert_webhook_url": receiver.url},
            "models": [{"name": "chat", "deployments": [deployment]}],
        }
        urls = fleet(stack, tmp_path, postgres_admin, config)

        asyncio.run(burst(urls, BODY, MASTER, 3))  # warm every replica, so none is too slow to join the race
        first = asyncio.run(burst(urls, BODY, FIRST, 21))  # the 20th crosses 80 %, settling beside the others
        first += asyncio.run(burst(urls, BODY, FIRST, 3))  # one per replica: each now reads a level past 80 %
        past_80 = [_level(url) for url in urls]
        first += asyncio.run(burst(urls, BODY, FIRST, 15))  # one fits (100 %), the rest are refused
        receiver.wait_for(2)
        first_taken = Counter(_alert_id(body) for body in receiver.taken)
        at_100 = [_level(url) for url in urls]
        usage = httpx.get(urls[0] + "/v1/usage", headers={"authorization": f"Bearer {FIRST}"}).json()

        second = asyncio.run(burst(urls, BODY, SECOND, 6))
        receiver.wait_for(4)
        announced = {
            threshold: fleet_total(urls, "ai_api_budget_alerts_total", scope="key", threshold=threshold)
            for threshold in ("0.8", "1")
        }
    assert Counter(r.status_code for r in first) == {200: 25, 429: 14}
    assert Counter(r.status_code for r in second) == {200: 1, 429: 5}
    assert first_taken == {("first", "daily", 0.8): 1, ("first", "daily", 1.0): 1}
    taken = Counter(_alert_id(body) for body in receiver.taken)
    assert taken == {
        ("first", "daily", 0.8): 1,
        ("first", "daily", 1.0): 1,
        ("second", "daily", 0.8): 1,
        ("second", "daily", 1.0): 1,
    }  # once per budget and threshold, not once per replica, nor once per fleet
    assert len(receiver.attempts) == 8  # each alert: one 503, then one retry that was taken
    assert {content_type for _, content_type, _ in receiver.attempts} == {"application/json"}
    for body in receiver.taken:
        assert isinstance(body["text"], str) and f"'{body['budget']}'" in body["text"]  # Slack's field
        assert body["scope"] == "key" and body["limit_usd"] > 0
        assert body["spent_usd"] >= body["threshold"] * body["limit_usd"] * (1 - 1e-9)
    assert announced == {"0.8": 2, "1": 2}
    assert Counter((line["budget"], line["threshold"]) for line in logged_crossings(tmp_path)) == {
        ("first", 0.8): 1,
        ("first", 1.0): 1,
        ("second", 0.8): 1,
        ("second", 1.0): 1,
    }
    daily = usage["windows"]["daily"]
    assert daily["spent_usd"] == pytest.approx(daily["budget_usd"], rel=1e-9)
    # Every replica read a level past 80 % after its settle, yet the 80 % alert went out once.
    assert all(level >= 0.8 for level in past_80), past_80
    # Each gauge holds the level its replica's last settle read; the very last settle read the total.
    assert max(at_100) == pytest.approx(daily["spent_usd"] / daily["budget_usd"], rel=1e-9)


CHAT_PRICE = {"input_per_mtok": 0.37, "output_per_mtok": 1.91}
CLAUDE_PRICE = {"input_per_mtok": 2.9, "output_per_mtok": 14.3}
SPENDER, CAPPED = "fm-ledger-spender-key", "fm-ledger-capped-key"
QUESTION = "What colour is the sky?"


async def _ask_openai(url: str, model: str, stream: bool) -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=SPENDER, max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": QUESTION}]
        if stream:
            chunks = await client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
            assert [chunk async for chunk in chunks][-1].usage is not None
        else:
            assert (await client.chat.completions.create(model=model, messages=messages)).usage is not None


async def _ask_anthropic(url: str, model: str, stream: bool) -> None:
    async with anthropic.AsyncAnthropic(base_url=url, api_key=SPENDER, max_retries=0) as client:
        messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": QUESTION}]
        if stream:
            async with client.messages.stream(model=model, max_tokens=256, messages=messages) as events:
                await events.get_final_message()
        else:
            await client.messages.create(model=model, max_tokens=256, messages=messages)


async def _mix(urls: list[str]) -> int:
    """Both models through both ingress formats, whole and streamed, at once; how many were asked."""
    asks = [
        ask(urls[i % len(urls)], model, stream)
        for i, (ask, model, stream) in enumerate(
            (ask, model, stream)
            for ask in (_ask_openai, _ask_anthropic)
            for model in ("chat", "claude")
            for stream in (False, True)
            for _ in range(3)
        )
    ]
    await asyncio.gather(*asks)
    return len(asks)


def _cut_stream(url: str) -> None:
    """A client that reads the first events of a slow stream and hangs up."""
    body = {"model": "chat", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    headers = {"authorization": f"Bearer {SPENDER}"}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        for index, _line in enumerate(response.iter_lines()):
            if index == 4:
                break


def _hang_up_before_the_answer(url: str, body: dict[str, Any]) -> None:
    """A client that gives up while the upstream is still thinking, before a byte of the answer."""
    headers = {"authorization": f"Bearer {SPENDER}"}
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=0.3)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(url + "/v1/chat/completions", json=body, headers=headers)


def _read_all(url: str, body: dict[str, Any], key: str = SPENDER) -> int:
    """POST a chat request and read whatever comes back; its status."""
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(timeout=10) as client:
        return client.post(url + "/v1/chat/completions", json=body, headers=headers).status_code


def _ledger(url: str, expected_requests: int) -> dict[str, Any]:
    """`/admin/spend` by model and provider once the feeders have written `expected_requests` rows."""
    deadline = time.monotonic() + 15
    while True:
        report = httpx.get(
            url + "/admin/spend",
            params={"group_by": "model,provider"},
            headers={"authorization": f"Bearer {MASTER}"},
        )
        report.raise_for_status()
        body: dict[str, Any] = report.json()
        if body["requests"] >= expected_requests or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_cost_metric_across_replicas_equals_the_ledger(tmp_path: Path, postgres_admin: str) -> None:
    # Every way a request can end that spends, or must not spend: whole and streamed answers in both
    # ingress formats from two priced providers; a stream the client abandons midway and one the
    # upstream cuts (usage estimated from what was seen); a whole answer and a stream whose client hung
    # up before the first byte (the upstream answered, so they are owed); an upstream error and a
    # budget refusal (neither spends).
    with contextlib.ExitStack() as stack:
        fake_openai, fake_anthropic = stack.enter_context(FakeOpenAI()), stack.enter_context(FakeAnthropic())
        fake_openai.script.set_default(
            Reply.text("Blue, mostly.", chunks=3, usage=Usage(input_tokens=1_234, output_tokens=567))
        )
        fake_anthropic.script.set_default(
            Reply.text("Blue, by day.", chunks=3, usage=Usage(input_tokens=2_345, output_tokens=678))
        )
        models = [
            {
                "name": name,
                "deployments": [
                    {
                        "provider": provider,
                        "model": upstream,
                        "api_base": fake.base_url,
                        "api_key": "k",
                        "price": price,
                    }
                ],
            }
            for name, provider, upstream, fake, price in (
                ("chat", "openai", "gpt-4o-mini", fake_openai, CHAT_PRICE),
                ("claude", "anthropic", "claude-sonnet-4-5", fake_anthropic, CLAUDE_PRICE),
            )
        ]
        keys = [
            {"alias": "spender", "key": SPENDER},
            {"alias": "capped", "key": CAPPED, "budget": {"daily_usd": 0.000001}},
        ]
        urls = fleet(stack, tmp_path, postgres_admin, {"keys": keys, "models": models})

        spent = asyncio.run(_mix(urls))
        whole = {"model": "chat", "messages": [{"role": "user", "content": QUESTION}]}
        streamed = {**whole, "stream": True}
        fake_openai.script.reply(Reply.text("word " * 40, chunks=40, chunk_delay=0.05))
        _cut_stream(urls[0])
        fake_openai.script.reply(Reply.drop(after_chunks=2, text="cut off in the middle", chunks=6))
        assert _read_all(urls[1], streamed) == 200
        fake_openai.script.reply(Reply.text("late", usage=Usage(input_tokens=11, output_tokens=7), delay=0.8))
        _hang_up_before_the_answer(urls[2], whole)
        fake_openai.script.reply(Reply.text("late", chunks=2, usage=Usage(13, 5), delay=0.8))
        _hang_up_before_the_answer(urls[0], streamed)
        spent += 4  # the upstream answered all four, so each is owed, though no client read it whole
        fake_openai.script.reply(Reply.error(400, "bad request"))
        assert _read_all(urls[2], whole) == 400
        refused = {"model": "claude", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 50}
        assert _read_all(urls[0], refused, key=CAPPED) == 429
        ledger = _ledger(urls[1], spent)
        metric: defaultdict[tuple[str, str], float] = defaultdict(float)
        tokens: Counter[tuple[str, str, str]] = Counter()
        for url in urls:
            for labels, value in samples(url, "ai_api_cost_total"):
                metric[labels["model"], labels["provider"]] += value
            for labels, value in samples(url, "ai_api_tokens_total"):
                tokens[labels["model"], labels["provider"], labels["type"]] += int(value)
    assert len(fake_anthropic.requests) == 12  # the capped key's request was refused before it
    assert ledger["requests"] == spent
    assert ledger["unpriced_requests"] == 0
    rows = {(row["model"], row["provider"]): row for row in ledger["data"]}
    assert set(rows) == set(metric)
    assert set(rows) == {("chat", "openai"), ("claude", "anthropic")}
    for (model, provider), cost in metric.items():
        assert cost > 0
        assert cost == pytest.approx(rows[model, provider]["cost_usd"], rel=1e-9, abs=0)
        assert tokens[model, provider, "input"] == rows[model, provider]["input_tokens"]
        assert tokens[model, provider, "output"] == rows[model, provider]["output_tokens"]
    assert sum(metric.values()) == pytest.approx(ledger["total_cost_usd"], rel=1e-9, abs=0)
