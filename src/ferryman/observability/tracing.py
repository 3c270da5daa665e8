"""OpenTelemetry tracing: off by default and then free; on, one span per request and per upstream attempt.

When `tracing.enabled` is false nothing here is instantiated: no middleware is installed, the gateway
gets no tracer, providers inject no headers — the hot path does not even look up a context variable.
When on, the OTLP exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables, an incoming W3C
`traceparent` becomes the parent of the request span, and the upstream attempt's context travels on to
the provider in the same header. Upstream attempt spans follow the GenAI semantic conventions
(`gen_ai.system`, `gen_ai.request.model`, `gen_ai.usage.input_tokens`, …).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.context import attach, detach
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TRACER_NAME = "ferryman"

# Our provider names → the `gen_ai.system` values of the semantic conventions.
GEN_AI_SYSTEMS = {
    "openai": "openai",
    "openai-compatible": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "fake": "ferryman.fake",
}


def create_tracer_provider(
    service_name: str, exporter: Literal["otlp", "console"], version: str
) -> TracerProvider:
    """A tracer provider exporting in batches; OTLP settings come from the `OTEL_*` environment."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": version})
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
    return provider


def _exporter(kind: Literal["otlp", "console"]) -> SpanExporter:
    if kind == "console":
        return ConsoleSpanExporter()
    # Imported here: the OTLP exporter is the optional `otlp` extra, needed only when tracing is on.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def inject_trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` carrying the current span's `traceparent` (and `tracestate`)."""
    carrier = dict(headers)
    propagate.inject(carrier)
    return carrier


class TracingMiddleware:
    """One SERVER span per HTTP request, continuing the caller's trace when it sent `traceparent`."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        parent = propagate.extract(carrier)
        method, path = scope["method"], scope["path"]
        span = self.tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        token = attach(otel_trace.set_span_in_context(span, parent))

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                request_id = scope.get("state", {}).get("request_id")
                if request_id:
                    span.set_attribute("ferryman.request_id", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            detach(token)
            span.end()


def start_client_span(tracer: Tracer, name: str, attributes: dict[str, str | int | float]) -> Span:
    """Start a CLIENT span (an upstream attempt) as a child of the current context."""
    return tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def span_in_context(span: Span | None) -> AbstractContextManager[object]:
    """Make `span` current for a block (so `traceparent` injection sees it); a no-op for None."""
    if span is None:
        return nullcontext()
    return otel_trace.use_span(span, end_on_exit=False)


def end_span(
    span: Span | None, attributes: dict[str, str | int | float], error: BaseException | None = None
) -> None:
    """Set final attributes (usage, finish reason) and end `span`; marks it failed when `error` is given."""
    if span is None:
        return
    span.set_attributes(attributes)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.set_attribute("error.type", type(error).__name__)
    span.end()
