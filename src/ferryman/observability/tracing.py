"""OpenTelemetry tracing: off by default and then free; on, one span per request and per upstream attempt.

When `tracing.enabled` is false nothing here is instantiated: no middleware is installed, the gateway
gets no tracer, providers inject no headers — the hot path does not even look up a context variable.
When on, the OTLP exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables, an incoming W3C
`traceparent` becomes the parent of the request span, and the upstream attempt's context travels on to
the provider in the same header. Upstream attempt spans follow the GenAI semantic conventions
(`gen_ai.system`, `gen_ai.request.model`, `gen_ai.usage.input_tokens`, …); `TracingObserver` opens and
ends them as the core's attempt loop reports its attempts.
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

from ferryman.core.canonical import ChatRequest
from ferryman.core.exchange import Exchange
from ferryman.core.observer import Attempt
from ferryman.errors import ProviderError

TRACER_NAME = "ferryman"


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


class TracingObserver:
    """One CLIENT span per upstream attempt, current while the call runs (so `traceparent` goes out)."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._spans: dict[Attempt, Span] = {}

    def attempt_started(self, exchange: Exchange, attempt: Attempt) -> None:
        """Open the attempt's span, named for the operation and the upstream model."""
        target = attempt.target
        attributes = _request_attributes(exchange)
        attributes.update(
            {
                "gen_ai.system": type(target.upstream).gen_ai_system,
                "gen_ai.request.model": target.upstream_model,
                "ferryman.model": exchange.model,
                "ferryman.deployment": target.deployment,
                "ferryman.attempt": attempt.number,
            }
        )
        name = f"{attributes['gen_ai.operation.name']} {target.upstream_model}"
        self._spans[attempt] = start_client_span(self.tracer, name, attributes)

    def calling(self, attempt: Attempt) -> AbstractContextManager[object]:
        """The attempt's span as the current one."""
        return span_in_context(self._spans.get(attempt))

    def attempt_failed(self, exchange: Exchange, attempt: Attempt, error: ProviderError, kind: str) -> None:
        """End the span as failed."""
        end_span(self._spans.pop(attempt, None), {}, error)

    def first_token(self, exchange: Exchange, attempt: Attempt) -> None:
        """Nothing: time to first token is a metric."""

    def attempt_settled(self, exchange: Exchange, attempt: Attempt) -> None:
        """End the span with the usage (a stream that failed mid-way has ended it already)."""
        usage = exchange.usage
        attributes: dict[str, str | int | float] = {"gen_ai.response.model": attempt.target.upstream_model}
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        end_span(self._spans.pop(attempt, None), attributes)

    def attempt_abandoned(self, exchange: Exchange, attempt: Attempt) -> None:
        """End the span: the client went away before the upstream answered."""
        span = self._spans.pop(attempt, None)
        if span is not None:
            span.set_attribute("error.type", "cancelled")
            span.end()

    def request_finished(self, exchange: Exchange, error: BaseException | None) -> None:
        """Nothing: the request span is the middleware's."""


def _request_attributes(exchange: Exchange) -> dict[str, str | int | float]:
    """The GenAI request attributes known before the call."""
    request = exchange.request
    if not isinstance(request, ChatRequest):
        return {"gen_ai.operation.name": "embeddings"}
    attributes: dict[str, str | int | float] = {"gen_ai.operation.name": "chat"}
    if request.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if request.top_p is not None:
        attributes["gen_ai.request.top_p"] = request.top_p
    return attributes
