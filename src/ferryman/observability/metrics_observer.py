"""The Prometheus side of the core's observer: every metric a request moves, moved in one place."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from ferryman.core.exchange import Exchange
from ferryman.core.limits import LimitExceededError
from ferryman.core.observer import Attempt
from ferryman.errors import PermissionDeniedError, ProviderError
from ferryman.observability.metrics import Metrics


class MetricsObserver:
    """Counts requests, attempts, failures, tokens and cost; times requests, first tokens and overhead."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def attempt_started(self, exchange: Exchange, attempt: Attempt) -> None:
        """One more active request and one more upstream attempt on the provider."""
        provider = attempt.target.provider
        self.metrics.active.labels(provider).inc()
        self.metrics.upstream_attempts.labels(provider, _served(exchange)).inc()

    def calling(self, attempt: Attempt) -> AbstractContextManager[object]:
        """No context needed."""
        return nullcontext()

    def attempt_failed(self, exchange: Exchange, attempt: Attempt, error: ProviderError, kind: str) -> None:
        """Count the failure by class; an attempt that never answered is no longer active."""
        provider = attempt.target.provider
        self.metrics.upstream_errors.labels(provider, _served(exchange), kind).inc()
        if not attempt.answered:
            self.metrics.active.labels(provider).dec()

    def first_token(self, exchange: Exchange, attempt: Attempt) -> None:
        """Observe the time to first token."""
        if exchange.time_to_first_token is not None:
            histogram = self.metrics.time_to_first_token.labels(attempt.target.provider, _served(exchange))
            histogram.observe(exchange.time_to_first_token)

    def attempt_settled(self, exchange: Exchange, attempt: Attempt) -> None:
        """Tokens and cost (or an unpriced request: never a silent $0); the attempt is over."""
        m, provider, model = self.metrics, attempt.target.provider, _served(exchange)
        m.active.labels(provider).dec()
        usage = exchange.usage
        if usage is not None:
            m.tokens.labels(provider, model, "input").inc(usage.input_tokens)
            m.tokens.labels(provider, model, "output").inc(usage.output_tokens)
        if exchange.cost is None:
            m.unpriced.labels(provider, model).inc()
        else:
            m.cost.labels(provider, model).inc(exchange.cost)

    def attempt_abandoned(self, exchange: Exchange, attempt: Attempt) -> None:
        """The client left before the upstream answered: no longer active."""
        self.metrics.active.labels(attempt.target.provider).dec()

    def request_finished(self, exchange: Exchange, error: BaseException | None) -> None:
        """The seed's request counter and duration, and the gateway's own overhead; a model refused
        to the caller counts as an auth failure. Requests refused before any upstream was chosen are
        not upstream requests and leave the provider metrics alone."""
        m = self.metrics
        if isinstance(error, PermissionDeniedError) and error.code == "model_not_allowed":
            m.auth_failures.labels("forbidden_model").inc()
        elif isinstance(error, LimitExceededError):
            m.rate_limited.labels(error.scope).inc()
        if exchange.cache_result in ("hit", "miss"):
            m.cache_requests.labels(exchange.cache_result).inc()
        if not exchange.provider:  # a cache hit's provider is "cache": requests it answered count too
            return
        m.requests.labels(exchange.provider, exchange.status, exchange.model).inc()
        m.duration.labels(exchange.provider, exchange.model).observe(exchange.latency)
        m.overhead.labels(exchange.provider).observe(exchange.overhead)


def _served(exchange: Exchange) -> str:
    """The model an attempt went to (a fallback's own name): upstream metrics count by it, while the
    request counters keep the model the client asked for."""
    return exchange.served_model or exchange.model
