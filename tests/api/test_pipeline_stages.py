"""Every inference route runs the one pipeline: a probe stage sees each ingress format and embeddings,
streamed and not, enters once and exits once — also when the client hangs up mid-stream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as gtypes

from ferryman.core.exchange import Exchange
from ferryman.core.pipeline import Answer, Outcome
from ferryman.testing import FakeOpenAI, Reply
from tests.conftest import RunningGateway, serve_gateway

MASTER = "sk-pipeline-probe-master"


@dataclass
class CountingStage:
    """Counts what it sees; thread-safe enough for one gateway thread and the test thread reading."""

    name: str = "probe"
    entered: list[tuple[str, bool, str]] = field(default_factory=list)
    exited: list[tuple[str, str]] = field(default_factory=list)

    async def enter(self, exchange: Exchange) -> Answer | None:
        self.entered.append((exchange.operation, exchange.stream, exchange.request_id))
        return None

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        self.exited.append((exchange.request_id, outcome.kind))


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def probe() -> CountingStage:
    return CountingStage()


@pytest.fixture(scope="module")
def gateway(upstream: FakeOpenAI, probe: CountingStage) -> Iterator[RunningGateway]:
    deployment = {"provider": "openai", "model": "gpt-4o-mini", "api_base": upstream.base_url, "api_key": "k"}
    config = {
        "master_key": MASTER,
        "models": [
            {"name": "chat", "deployments": [deployment]},
            {"name": "embed", "deployments": [{**deployment, "model": "text-embedding-3-small"}]},
        ],
    }
    with serve_gateway(config, stages=[probe]) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(probe: CountingStage, upstream: FakeOpenAI) -> None:
    probe.entered.clear()
    probe.exited.clear()
    upstream.reset()


def _wait_for_exits(probe: CountingStage, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(probe.exited) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_every_ingress_format_and_embeddings_pass_the_stage_once(
    gateway: RunningGateway, probe: CountingStage
) -> None:
    hello = [{"role": "user", "content": "hi"}]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0) as client:
        client.chat.completions.create(model="chat", messages=hello)  # type: ignore[arg-type]
        list(client.chat.completions.create(model="chat", messages=hello, stream=True))  # type: ignore[arg-type]
        client.embeddings.create(model="embed", input="hi")
    with anthropic.Anthropic(base_url=gateway.url, api_key=MASTER, max_retries=0) as claude:
        claude.messages.create(model="chat", max_tokens=20, messages=hello)  # type: ignore[arg-type]
        with claude.messages.stream(model="chat", max_tokens=20, messages=hello) as stream:  # type: ignore[arg-type]
            stream.get_final_message()
    gemini = genai.Client(api_key=MASTER, http_options=gtypes.HttpOptions(base_url=gateway.url))
    gemini.models.generate_content(model="chat", contents="hi")
    list(gemini.models.generate_content_stream(model="chat", contents="hi"))
    _wait_for_exits(probe, 7)
    assert sorted((operation, stream) for operation, stream, _ in probe.entered) == sorted(
        [("chat", False)] * 3 + [("chat", True)] * 3 + [("embeddings", False)]
    )
    ids = [request_id for _, _, request_id in probe.entered]
    assert len(set(ids)) == 7
    assert sorted(probe.exited) == sorted((request_id, "answered") for request_id in ids)


def test_a_refused_request_never_reaches_the_stage(gateway: RunningGateway, probe: CountingStage) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gateway.url + "/v1/chat/completions", json=body).status_code == 401
    assert (
        httpx.post(
            gateway.url + "/v1/chat/completions",
            json={**body, "model": "nope"},
            headers={"authorization": f"Bearer {MASTER}"},
        ).status_code
        == 404
    )
    assert probe.entered == [] and probe.exited == []


def test_a_client_that_hangs_up_mid_stream_exits_the_stage_once_as_cancelled(
    gateway: RunningGateway, probe: CountingStage, upstream: FakeOpenAI
) -> None:
    upstream.script.reply(Reply.text(" ".join(f"w{i}" for i in range(40)), chunks=40, chunk_delay=0.1))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], stream=True
        )
        next(iter(stream))
        stream.close()
    _wait_for_exits(probe, 1)
    time.sleep(0.2)  # a second exit, were there one, would have come by now
    assert [kind for _, kind in probe.exited] == ["cancelled"]


def test_a_mid_stream_upstream_failure_exits_the_stage_once_as_failed(
    gateway: RunningGateway, probe: CountingStage, upstream: FakeOpenAI
) -> None:
    upstream.script.reply(Reply.drop(after_chunks=2))
    upstream.script.set_default(Reply.text("a b c d e", chunks=5))
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0) as client,
        pytest.raises(openai.APIError),
    ):
        list(
            client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    _wait_for_exits(probe, 1)
    assert [kind for _, kind in probe.exited] == ["failed"]


def test_an_end_user_header_or_body_field_reaches_the_core(
    gateway: RunningGateway, probe: CountingStage
) -> None:
    seen: list[str | None] = []

    async def note(exchange: Exchange) -> Answer | None:
        seen.append(exchange.caller.end_user)
        return None

    original = probe.enter
    probe.enter = note  # type: ignore[method-assign]
    try:
        headers = {"authorization": f"Bearer {MASTER}"}
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        url = gateway.url + "/v1/chat/completions"
        httpx.post(url, json={**body, "user": "from-body"}, headers=headers).raise_for_status()
        httpx.post(url, json={**body, "user": "ignored"}, headers={**headers, "x-ferryman-end-user": "hdr"})
        httpx.post(
            gateway.url + "/v1/messages",
            json={**body, "max_tokens": 5, "metadata": {"user_id": "claude-user"}},
            headers=headers,
        )
        bad = httpx.post(url, json=body, headers={**headers, "x-ferryman-end-user": "x" * 300})
    finally:
        probe.enter = original  # type: ignore[method-assign]
    assert seen == ["from-body", "hdr", "claude-user"]
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-ferryman-end-user"
