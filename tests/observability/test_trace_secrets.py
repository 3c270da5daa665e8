"""A virtual key's secret never reaches a trace: not in any span's name, attributes, events, links or status."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import RunningGateway, serve_gateway

MASTER = "trace-master-key-for-tests"
FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "fake-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def use_key_every_way(gateway: RunningGateway, secret: str) -> list[int]:
    """Send `secret` in each place a client may put it, on each ingress format; the statuses returned."""
    url = gateway.url
    calls = [
        ("/v1/chat/completions", CHAT, {"authorization": f"Bearer {secret}"}),
        ("/v1/chat/completions", {**CHAT, "stream": True}, {"authorization": f"Bearer {secret}"}),
        ("/v1/messages", MESSAGES, {"x-api-key": secret, "anthropic-version": "2023-06-01"}),
        ("/v1beta/models/fake-model:generateContent", GEMINI, {"x-goog-api-key": secret}),
        (f"/v1beta/models/fake-model:streamGenerateContent?alt=sse&key={secret}", GEMINI, {}),
        ("/v1/embeddings", {"model": "fake-model", "input": "hi"}, {"api-key": secret}),
    ]
    statuses = [
        httpx.post(url + path, json=body, headers=headers, timeout=10).status_code
        for path, body, headers in calls
    ]
    statuses.append(httpx.get(url + "/v1/models", params={"key": secret}, timeout=10).status_code)
    return statuses


def finished_spans(exporter: InMemorySpanExporter, at_least: int) -> tuple[ReadableSpan, ...]:
    """The finished spans once `at_least` request spans have ended (each ends just after its last byte)."""
    deadline = time.monotonic() + 3
    while sum(s.kind == SpanKind.SERVER for s in exporter.get_finished_spans()) < at_least:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return exporter.get_finished_spans()


def test_a_virtual_key_never_reaches_a_span(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = {
        "master_key": MASTER,
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'ferryman.db'}",
        "models": [FAKE],
    }
    with (
        serve_gateway(config, tracer_provider=provider) as gateway,
        httpx.Client(
            base_url=gateway.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10
        ) as admin,
    ):
        created = admin.post("/admin/keys", json={"alias": "traced-key"}).json()
        secret = created["key"]
        assert use_key_every_way(gateway, secret) == [200] * 7
        rotated = admin.post(f"/admin/keys/{created['id']}/rotate").json()["key"]
        assert use_key_every_way(gateway, secret) == [401] * 7  # the old secret, refused
        assert use_key_every_way(gateway, rotated) == [200] * 7
        admin.delete(f"/admin/keys/{created['id']}")
        assert use_key_every_way(gateway, rotated) == [401] * 7
        spans = finished_spans(exporter, at_least=3 + 4 * 7)
    aliases = {(s.attributes or {}).get("ferryman.key_alias") for s in spans if s.name == "auth"}
    assert "traced-key" in aliases  # the key's uses were traced, under its alias
    assert sum(s.kind == SpanKind.CLIENT for s in spans) >= 2 * 6  # and so were the upstream calls
    for value in (secret, rotated):
        random_part = value.removeprefix("fm-")
        leaks = [span.name for span in spans if random_part in span.to_json()]
        assert not leaks, f"a key's secret is in the spans {leaks}"
    assert MASTER not in "".join(span.to_json() for span in spans)
