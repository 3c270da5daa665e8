"""What an attacker with a client's access tries, and what the gateway does instead.

- No request field makes the gateway fetch a URL: image URLs pointing at loopback (cloud metadata, the
  admin port) are handed to the provider as text, never fetched, and a model name shaped like a URL or a
  path is just an unknown model.
- JSON nested a hundred thousand deep, or a body of a million tiny values, is a 400 or 413, never a 5xx.
- Header values never leak into other headers, and a client's request id is only echoed when sane.
- After a run that used every secret (master key, a virtual key, the upstream key, including an upstream
  error quoting it), none of them is in the logs, the metrics, the traces or any response.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferryman.observability.logging import configure_logging
from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer, Reply
from tests.conftest import RunningGateway, serve_gateway

MASTER = "fm-security-master-0123456789abcdef"
UPSTREAM_KEYS = {
    "openai": "sk-upstream-openai-SECRET-7f3a9c",
    "anthropic": "sk-ant-upstream-SECRET-4b2e81",
    "gemini": "AIzaUpstreamGeminiSECRET93kd02",
}
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}


class Listener:
    """A TCP port that records every connection made to it: the stand-in for a metadata service."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    with (
        FakeOpenAI(api_key=UPSTREAM_KEYS["openai"]) as openai_fake,
        FakeAnthropic(api_key=UPSTREAM_KEYS["anthropic"]) as anthropic_fake,
        FakeGemini(api_key=UPSTREAM_KEYS["gemini"]) as gemini_fake,
    ):
        yield {"openai": openai_fake, "anthropic": anthropic_fake, "gemini": gemini_fake}


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    yield stream
    logging.getLogger("ferryman").handlers.clear()


@pytest.fixture(scope="module")
def gateway(
    fakes: dict[str, FakeServer],
    exporter: InMemorySpanExporter,
    log_stream: io.StringIO,
    tmp_path_factory: Any,
) -> Iterator[RunningGateway]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    database = Path(tmp_path_factory.mktemp("security")) / "ferryman.db"
    config = {
        "master_key": MASTER,
        "database_url": f"sqlite+aiosqlite:///{database}",
        "retries": {"max_attempts_per_deployment": 1},
        "models": [
            {
                "name": name,
                "deployments": [
                    {
                        "provider": name,
                        "model": MODELS[name],
                        "api_base": fake.base_url,
                        "api_key": UPSTREAM_KEYS[name],
                    }
                ],
            }
            for name, fake in fakes.items()
        ],
    }
    with serve_gateway(config, tracer_provider=provider) as running:
        yield running


@pytest.fixture(scope="module")
def virtual_key(gateway: RunningGateway) -> str:
    created = httpx.post(
        gateway.url + "/admin/keys",
        json={"alias": "attacker"},
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    assert created.status_code in (200, 201), created.text
    return str(created.json()["key"])


def chat(gateway: RunningGateway, key: str, model: str, content: Any, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


@pytest.mark.parametrize("provider", list(MODELS))
def test_an_image_url_at_loopback_is_never_fetched_by_the_gateway(
    gateway: RunningGateway, fakes: dict[str, FakeServer], virtual_key: str, provider: str
) -> None:
    listener = Listener()
    try:
        url = f"http://127.0.0.1:{listener.port}/latest/meta-data/iam/security-credentials/"
        content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": url}}]
        response = chat(gateway, virtual_key, provider, content)
        assert response.status_code == 200, response.text
        time.sleep(0.3)  # a fetch would have happened by now
        assert listener.connections == 0
        assert url in str(fakes[provider].requests[-1].body)  # handed on as a URL, for the provider to judge
    finally:
        listener.close()


@pytest.mark.parametrize(
    "model",
    [
        "http://127.0.0.1:9/v1",
        "../../admin/keys",
        "openai/../../../etc/passwd",
        "gpt-4o-mini\r\nX-Injected: 1",
        "gemini:generateContent?key=x",
    ],
)
def test_a_model_shaped_like_a_url_or_a_path_is_only_an_unknown_model(
    gateway: RunningGateway, virtual_key: str, model: str
) -> None:
    response = chat(gateway, virtual_key, model, "hi")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"
    assert "x-injected" not in response.headers


@pytest.mark.parametrize("path", ["..%2F..%2Fadmin%2Fkeys:generateContent", "%2e%2e:generateContent"])
def test_a_gemini_path_model_cannot_climb_out(gateway: RunningGateway, virtual_key: str, path: str) -> None:
    response = httpx.post(
        f"{gateway.url}/v1beta/models/{path}",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": virtual_key},
        timeout=10,
    )
    assert response.status_code in (400, 404), response.text


@pytest.mark.parametrize(
    "route", ["/v1/chat/completions", "/v1/messages", "/v1beta/models/gemini:generateContent", "/admin/keys"]
)
def test_deeply_nested_or_huge_json_is_refused_cleanly(gateway: RunningGateway, route: str) -> None:
    headers = {"authorization": f"Bearer {MASTER}", "content-type": "application/json"}
    for body in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"[" + b"0," * 3_000_000 + b"0]",
    ):
        response = httpx.post(gateway.url + route, content=body, headers=headers, timeout=30)
        assert response.status_code in (400, 413), (route, response.status_code, response.text[:200])
        assert "Traceback" not in response.text


def test_header_values_stay_in_their_header(gateway: RunningGateway, virtual_key: str) -> None:
    hostile = {
        "x-request-id": "<script>alert(1)</script>" + "x" * 300,
        "x-ferryman-end-user": "user\u2028two",
        "x-ferryman-fallbacks": "openai, ../../admin",
    }
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "openai", "messages": [{"role": "user", "content": "hi"}]},
        headers={
            "authorization": f"Bearer {virtual_key}",
            **{k: v.encode("utf-8") for k, v in hostile.items()},
        },  # type: ignore[dict-item]
        timeout=10,
    )
    assert response.status_code < 500, response.text
    assert response.headers["x-request-id"].startswith("req_")  # an insane client id is replaced, not echoed
    assert all("<script>" not in value for value in response.headers.values())


def test_no_secret_is_left_in_logs_metrics_traces_or_answers(
    gateway: RunningGateway,
    fakes: dict[str, FakeServer],
    virtual_key: str,
    exporter: InMemorySpanExporter,
    log_stream: io.StringIO,
) -> None:
    answers: list[str] = []
    for provider, fake in fakes.items():
        answers.append(chat(gateway, virtual_key, provider, "hello").text)
        answers.append(chat(gateway, virtual_key, provider, "hello", stream=True).text)
        # An upstream that refuses its key and quotes it back, as OpenAI's 401 does.
        fake.script.reply(Reply.error(401, f"Incorrect API key provided: {UPSTREAM_KEYS[provider]}"))
        refused = chat(gateway, virtual_key, provider, "hello")
        assert refused.status_code == 502
        answers.append(refused.text)
    answers.append(chat(gateway, virtual_key + "tampered", "openai", "hello").text)
    answers.append(chat(gateway, MASTER, "openai", "hello").text)
    answers.append(httpx.get(gateway.url + "/admin/keys", headers={"authorization": f"Bearer {MASTER}"}).text)
    metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
    time.sleep(0.2)  # the last spans end just after their last byte
    spans = [span.to_json() for span in exporter.get_finished_spans()]
    assert spans and metrics and log_stream.getvalue()
    places = {
        "logs": log_stream.getvalue(),
        "metrics": metrics,
        "traces": "\n".join(spans),
        "answers": "\n".join(answers),
    }
    for secret in (MASTER, virtual_key, *UPSTREAM_KEYS.values()):
        found = [place for place, text in places.items() if secret in text]
        assert not found, f"{secret[:6]}… found in {found}"
