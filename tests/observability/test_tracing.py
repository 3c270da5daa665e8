"""Spans: one per request, one per upstream attempt with GenAI attributes, traceparent in and out."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ferryman.testing import FakeAnthropic, Reply
from tests.conftest import RunningGateway, serve_gateway

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(exporter: InMemorySpanExporter, fake: FakeAnthropic) -> Iterator[RunningGateway]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = {
        "models": [
            {
                "name": "claude",
                "deployments": [
                    {
                        "provider": "anthropic",
                        "model": "claude-haiku-4-5",
                        "api_base": fake.base_url,
                        "api_key": "k",
                        "weight": 1,
                    },
                    {
                        "provider": "fake",
                        "model": "backup",
                        "weight": 0,
                        "price": {"input_per_mtok": 0, "output_per_mtok": 0},
                    },
                ],
            }
        ],
        # one attempt per deployment: each scripted fault is counted as it happens (retries: test_resilience.py)
        "retries": {"max_attempts_per_deployment": 1},
    }
    with serve_gateway(config, tracer_provider=provider) as running:
        yield running


@pytest.fixture(autouse=True)
def clean(exporter: InMemorySpanExporter, fake: FakeAnthropic) -> None:
    exporter.clear()
    fake.reset()


def chat(gateway: RunningGateway, *, stream: bool = False, traceparent: str | None = None) -> httpx.Response:
    headers = {"traceparent": traceparent} if traceparent else {}
    body = {
        "model": "claude",
        "max_tokens": 20,
        "temperature": 0.5,
        "stream": stream,
        "messages": [{"role": "user", "content": "trace me"}],
    }
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)


def spans_by_kind(exporter: InMemorySpanExporter) -> dict[SpanKind, list[ReadableSpan]]:
    """Finished spans by kind, once the request span has ended (it ends just after the last byte)."""
    deadline = time.monotonic() + 3
    while not any(s.kind == SpanKind.SERVER for s in exporter.get_finished_spans()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    grouped: dict[SpanKind, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        grouped.setdefault(span.kind, []).append(span)
    return grouped


@pytest.mark.parametrize("stream", [False, True])
def test_request_and_attempt_spans_with_genai_attributes(
    gateway: RunningGateway, exporter: InMemorySpanExporter, stream: bool
) -> None:
    response = chat(gateway, stream=stream)
    assert response.status_code == 200
    spans = spans_by_kind(exporter)
    (server,) = spans[SpanKind.SERVER]
    (attempt,) = spans[SpanKind.CLIENT]
    (auth,) = [s for s in spans[SpanKind.INTERNAL] if s.name == "auth"]
    assert auth.parent is not None and auth.parent.span_id == server.context.span_id
    assert (auth.attributes or {})["ferryman.key_alias"] == "anonymous"
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    assert server.attributes["ferryman.request_id"] == response.headers["x-request-id"]
    assert attempt.parent is not None and attempt.parent.span_id == server.context.span_id
    assert attempt.name == "chat claude-haiku-4-5"
    attributes = dict(attempt.attributes or {})
    assert attributes["gen_ai.system"] == "anthropic"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "claude-haiku-4-5"
    assert attributes["gen_ai.request.max_tokens"] == 20
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.usage.input_tokens"] == 2
    assert attributes["gen_ai.usage.output_tokens"] == 3


def test_incoming_traceparent_continues_the_trace_and_reaches_the_upstream(
    gateway: RunningGateway, exporter: InMemorySpanExporter, fake: FakeAnthropic
) -> None:
    assert chat(gateway, traceparent=PARENT).status_code == 200
    spans = spans_by_kind(exporter)
    (server,) = spans[SpanKind.SERVER]
    (attempt,) = spans[SpanKind.CLIENT]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    sent = fake.last_request.headers["traceparent"]
    assert sent.split("-")[1] == TRACE_ID
    assert sent.split("-")[2] == format(attempt.context.span_id, "016x")


def test_failed_attempt_is_an_error_span_and_the_fallback_gets_its_own(
    gateway: RunningGateway, exporter: InMemorySpanExporter, fake: FakeAnthropic
) -> None:
    fake.script.reply(Reply.error(503, "down"))
    assert chat(gateway).status_code == 200
    attempts = sorted(spans_by_kind(exporter)[SpanKind.CLIENT], key=lambda s: s.start_time or 0)
    assert [s.name for s in attempts] == ["chat claude-haiku-4-5", "chat backup"]
    assert not attempts[0].status.is_ok
    assert (attempts[0].attributes or {})["error.type"] == "UpstreamStatusError"
    assert attempts[1].status.is_ok
    assert (attempts[1].attributes or {})["ferryman.attempt"] == 2


def test_tracing_off_installs_nothing_and_sends_no_traceparent(gateway_factory: object) -> None:
    with FakeAnthropic() as upstream:
        config = {
            "models": [
                {
                    "name": "c",
                    "deployments": [
                        {
                            "provider": "anthropic",
                            "model": "claude-haiku-4-5",
                            "api_base": upstream.base_url,
                            "api_key": "k",
                        }
                    ],
                }
            ]
        }
        running = gateway_factory(config)  # type: ignore[operator]
        body = {"model": "c", "messages": [{"role": "user", "content": "x"}]}
        assert (
            httpx.post(
                running.url + "/v1/chat/completions", json=body, headers={"traceparent": PARENT}, timeout=10
            ).status_code
            == 200
        )
        assert "traceparent" not in upstream.last_request.headers
        assert running.state.tracer is None


def test_otlp_exporter_sends_spans_where_the_otel_variables_say(
    gateway_factory: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tracing.enabled` with the OTLP exporter posts protobuf spans to `OTEL_EXPORTER_OTLP_ENDPOINT`."""
    import http.server
    import threading

    received: list[tuple[str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
        fake_model = {"provider": "fake", "model": "m", "price": {"input_per_mtok": 0, "output_per_mtok": 0}}
        config = {
            "tracing": {"enabled": True, "service_name": "ferryman-otlp-test"},
            "models": [{"name": "m", "deployments": [fake_model]}],
        }
        with serve_gateway(config) as running:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            assert httpx.post(running.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
        # the lifespan's shutdown flushed the batch processor
        assert received, "no spans reached the OTLP collector"
        path, payload = received[0]
        assert path == "/v1/traces"
        assert b"ferryman-otlp-test" in payload
        assert b"chat m" in payload
    finally:
        collector.shutdown()
        collector.server_close()
