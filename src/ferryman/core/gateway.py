"""One request's journey through the core: choose a deployment, call it, fall back, account for it.

The api layer parses a request into canonical form and hands it here with a `CallRecord`; the gateway
fills the record in (which deployment answered, how long the upstream took, usage, cost) and records
the metrics when the call — or the stream — is over. Streams are *primed*: the first event is awaited
before the caller commits to a 200, so an upstream that fails at once still gets a proper error status
and a fallback, while everything after the first event is forwarded as it arrives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from opentelemetry.trace import Span, Tracer

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from ferryman.core.deployment_health import DeploymentHealth
from ferryman.core.routing import Router, Target
from ferryman.core.upstream import StreamBatch
from ferryman.errors import ProviderError, UpstreamStatusError, UpstreamTimeoutError
from ferryman.observability.metrics import Metrics
from ferryman.observability.tracing import GEN_AI_SYSTEMS, end_span, span_in_context, start_client_span

log = logging.getLogger("ferryman.gateway")


@dataclass(slots=True)
class CallRecord:
    """What one request did, filled in as it goes; logs and metrics read it when it is done."""

    request_id: str
    model: str
    started: float
    provider: str = ""
    deployment: str = ""
    upstream_model: str = ""
    upstream_seconds: float = 0.0
    time_to_first_token: float | None = None
    usage: Usage | None = None
    cost: float | None = None
    status: str = "success"
    error: str | None = None
    attempts: int = 0
    stream: bool = False
    finished: float | None = None

    @property
    def latency(self) -> float:
        """Seconds from arrival to completion (to now, while still running)."""
        end = self.finished if self.finished is not None else time.perf_counter()
        return end - self.started


class _Answer(Protocol):
    """What a whole (non-streamed) upstream answer has in common: its usage."""

    @property
    def usage(self) -> Usage: ...


AnswerT = TypeVar("AnswerT", bound=_Answer)


class Gateway:
    """Routes canonical requests to upstreams, with fallbacks, and accounts for every call."""

    def __init__(self, router: Router, metrics: Metrics, tracer: Tracer | None = None) -> None:
        self.router = router
        self.metrics = metrics
        self.tracer = tracer
        self.health = DeploymentHealth()

    async def chat(self, request: ChatRequest, record: CallRecord) -> ChatResponse:
        """A whole answer from the first deployment that gives one."""
        response = await self._first_answer(
            request.model, record, lambda target: target.upstream.chat(request), _chat_attributes(request)
        )
        return replace(response, model=request.model)

    async def embed(self, request: EmbeddingRequest, record: CallRecord) -> EmbeddingResponse:
        """Embeddings from the first deployment that answers."""
        response = await self._first_answer(
            request.model,
            record,
            lambda target: target.upstream.embed(replace(request, model=target.upstream_model)),
            {"gen_ai.operation.name": "embeddings"},
        )
        return replace(response, model=request.model)

    async def open_stream(
        self, request: ChatRequest, record: CallRecord
    ) -> AsyncGenerator[StreamBatch, None]:
        """Start a stream on the first deployment whose first event arrives; see the module docstring."""
        record.stream = True
        last_error: ProviderError | None = None
        for target in self.router.choose_order(request.model):
            span = self._begin_attempt(record, target, _chat_attributes(request))
            batches = target.upstream.stream_chat(request)
            started = time.perf_counter()
            try:
                with span_in_context(span):
                    first = await anext(batches)
            except (ProviderError, StopAsyncIteration) as exc:
                record.upstream_seconds += time.perf_counter() - started
                self.metrics.active.labels(target.provider).dec()
                await batches.aclose()
                if isinstance(exc, StopAsyncIteration):
                    end_span(span, {}, exc)
                    raise
                last_error = self._attempt_failed(record, target, exc, span)
                if exc.retryable:
                    continue
                raise
            record.upstream_seconds += time.perf_counter() - started
            return self._relay(request, record, target, first, batches, span)
        assert last_error is not None  # noqa: S101 - choose_order never returns an empty list
        raise last_error

    async def _first_answer(
        self,
        model: str,
        record: CallRecord,
        call: Callable[[Target], Awaitable[AnswerT]],
        attributes: dict[str, str | int | float],
    ) -> AnswerT:
        """Try each deployment in order until one answers; fall back only on retryable failures."""
        last_error: ProviderError | None = None
        for target in self.router.choose_order(model):
            span = self._begin_attempt(record, target, attributes)
            started = time.perf_counter()
            try:
                with span_in_context(span):
                    response = await call(target)
            except ProviderError as exc:
                last_error = self._attempt_failed(record, target, exc, span)
                if exc.retryable:
                    continue
                raise
            finally:
                record.upstream_seconds += time.perf_counter() - started
                self.metrics.active.labels(target.provider).dec()
            self._settle(record, target, response.usage, span)
            return response
        assert last_error is not None  # noqa: S101 - choose_order never returns an empty list
        raise last_error

    def finish(self, record: CallRecord, error: BaseException | None = None) -> None:
        """Close the books on a request: status, duration, overhead. Called exactly once."""
        record.finished = time.perf_counter()
        if error is not None:
            record.status = "error"
            record.error = type(error).__name__
        if not record.provider:
            return  # refused before any upstream was chosen: not an upstream request
        model = record.model
        m = self.metrics
        m.requests.labels(record.provider, record.status, model).inc()
        m.duration.labels(record.provider, model).observe(record.latency)
        m.overhead.labels(record.provider).observe(max(record.latency - record.upstream_seconds, 0.0))

    async def _relay(
        self,
        request: ChatRequest,
        record: CallRecord,
        target: Target,
        first: StreamBatch,
        batches: AsyncGenerator[StreamBatch, None],
        span: Span | None,
    ) -> AsyncGenerator[StreamBatch, None]:
        usage: Usage | None = None
        output_chars = 0
        upstream_ok = True
        try:
            batch: StreamBatch | None = first
            while batch is not None:
                for event in batch:
                    if isinstance(event, UsageReport):
                        usage = event.usage
                    elif isinstance(event, TextDelta | ToolCallStart | ToolCallDelta):
                        self._first_token(record, target)
                        output_chars += len(event.text) if isinstance(event, TextDelta) else 0
                yield batch
                waited = time.perf_counter()
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    batch = None
                except ProviderError as exc:
                    self._attempt_failed(record, target, exc, span)
                    span, upstream_ok = None, False  # failed: the settlement below must not undo that
                    raise
                finally:
                    record.upstream_seconds += time.perf_counter() - waited
        finally:
            self.metrics.active.labels(target.provider).dec()
            await batches.aclose()
            usage = usage or _estimate_usage(request, output_chars, record)
            self._settle(record, target, usage, span, upstream_ok=upstream_ok)

    def _first_token(self, record: CallRecord, target: Target) -> None:
        """Note the time to first token, once per request."""
        if record.time_to_first_token is None:
            record.time_to_first_token = time.perf_counter() - record.started
            histogram = self.metrics.time_to_first_token.labels(target.provider, record.model)
            histogram.observe(record.time_to_first_token)

    def _begin_attempt(
        self, record: CallRecord, target: Target, attributes: dict[str, str | int | float]
    ) -> Span | None:
        record.attempts += 1
        record.provider = target.provider
        record.deployment = target.deployment
        record.upstream_model = target.upstream_model
        self.metrics.active.labels(target.provider).inc()
        self.metrics.upstream_attempts.labels(target.provider, record.model).inc()
        if self.tracer is None:
            return None
        operation = attributes.get("gen_ai.operation.name", "chat")
        return start_client_span(
            self.tracer,
            f"{operation} {target.upstream_model}",
            {
                **attributes,
                "gen_ai.system": GEN_AI_SYSTEMS.get(target.provider, target.provider),
                "gen_ai.request.model": target.upstream_model,
                "ferryman.model": record.model,
                "ferryman.deployment": target.deployment,
                "ferryman.attempt": record.attempts,
            },
        )

    def _attempt_failed(
        self, record: CallRecord, target: Target, exc: ProviderError, span: Span | None
    ) -> ProviderError:
        end_span(span, {}, exc)
        error_class = _error_class(exc)
        self.metrics.upstream_errors.labels(target.provider, record.model, error_class).inc()
        if exc.retryable:
            self.health.record_failure(target.deployment, error_class)
        log.warning(
            "upstream attempt failed",
            extra={"deployment": target.deployment, "error": exc.message, "retryable": exc.retryable},
        )
        return exc

    def _settle(
        self, record: CallRecord, target: Target, usage: Usage, span: Span | None, *, upstream_ok: bool = True
    ) -> None:
        """Account for what an attempt used (even a broken stream's partial usage is spent money)."""
        record.usage = usage
        if upstream_ok:
            self.health.record_success(target.deployment)
        end_span(
            span,
            {
                "gen_ai.response.model": target.upstream_model,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
            },
        )
        m = self.metrics
        m.tokens.labels(target.provider, record.model, "input").inc(usage.input_tokens)
        m.tokens.labels(target.provider, record.model, "output").inc(usage.output_tokens)
        if target.price is None:
            record.cost = None
            m.unpriced.labels(target.provider, record.model).inc()
            log.warning("unpriced model: cost unknown", extra={"deployment": target.deployment})
            return
        record.cost = target.price.cost(usage)
        m.cost.labels(target.provider, record.model).inc(record.cost)


def _chat_attributes(request: ChatRequest) -> dict[str, str | int | float]:
    """The GenAI request attributes known before the call."""
    attributes: dict[str, str | int | float] = {"gen_ai.operation.name": "chat"}
    if request.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if request.top_p is not None:
        attributes["gen_ai.request.top_p"] = request.top_p
    return attributes


def _estimate_usage(request: ChatRequest, output_chars: int, record: CallRecord) -> Usage:
    """An upstream stream that reported no usage is still counted, by the 4-characters rule."""
    log.warning("stream ended without usage; estimating", extra={"deployment": record.deployment})
    input_chars = sum(len(m.text) for m in request.messages)
    return Usage(input_tokens=max(input_chars // 4, 1), output_tokens=output_chars // 4)


def _error_class(exc: ProviderError) -> str:
    if isinstance(exc, UpstreamTimeoutError):
        return "timeout"
    if isinstance(exc, UpstreamStatusError):
        if exc.upstream_status == 429:
            return "rate_limited"
        return "status_4xx" if exc.upstream_status < 500 else "status_5xx"
    if exc.code == "upstream_malformed":
        return "malformed"
    return "connection"
