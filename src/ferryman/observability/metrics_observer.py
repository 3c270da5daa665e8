"""The Prometheus side of the core's observer: every metric a request moves, moved in one place."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from ferryman.core.exchange import Exchange
from ferryman.core.limits import LimitExceededError
from ferryman.core.observer import Attempt
from ferryman.errors import PermissionDeniedError, ProviderError
from ferryman.observability.metrics import Children, Metrics


class MetricsObserver:
    """Counts requests, attempts, failures, tokens and cost; times requests, first tokens and overhead."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._child = Children()

    def attempt_started(self, exchange: Exchange, attempt: Attempt) -> None:
        """One more active request and one more upstream attempt on the provider."""
        provider, m = attempt.target.provider, self.metrics
        self._child(m.active, provider).inc()
        self._child(m.upstream_attempts, provider, _served(exchange)).inc()
        if attempt.after is not None:
            self._child(m.upstream_retries, provider, _served(exchange), attempt.after).inc()

    def calling(self, attempt: Attempt) -> AbstractContextManager[object]:
        """No context needed."""
        return nullcontext()

    def attempt_failed(self, exchange: Exchange, attempt: Attempt, error: ProviderError, kind: str) -> None:
        """Count the failure by class; an attempt that never answered is no longer active."""
        provider, m = attempt.target.provider, self.metrics
        self._child(m.upstream_errors, provider, _served(exchange), kind).inc()
        if not attempt.answered:
            self._child(m.active, provider).dec()

    def first_token(self, exchange: Exchange, attempt: Attempt) -> None:
        """Observe the time to first token."""
        if exchange.time_to_first_token is not None:
            histogram = self._child(
                self.metrics.time_to_first_token, attempt.target.provider, _served(exchange)
            )
            histogram.observe(exchange.time_to_first_token)

    def attempt_settled(self, exchange: Exchange, attempt: Attempt) -> None:
        """Tokens and cost (or an unpriced request: never a silent $0); the attempt is over."""
        m, child, provider, model = self.metrics, self._child, attempt.target.provider, _served(exchange)
        child(m.active, provider).dec()
        usage = exchange.usage
        if usage is not None:
            child(m.tokens, provider, model, "input").inc(usage.input_tokens)
            child(m.tokens, provider, model, "output").inc(usage.output_tokens)
        if exchange.cost is None:
            child(m.unpriced, provider, model).inc()
        else:
            child(m.cost, provider, model).inc(exchange.cost)

    def attempt_abandoned(self, exchange: Exchange, attempt: Attempt) -> None:
        """The client left before the upstream answered: no longer active."""
        self._child(self.metrics.active, attempt.target.provider).dec()

    def request_finished(self, exchange: Exchange, error: BaseException | None) -> None:
        """The seed's request counter and duration, and the gateway's own overhead; a model refused
        to the caller counts as an auth failure. Requests refused before any upstream was chosen are
        not upstream requests and leave the provider metrics alone."""
        m, child = self.metrics, self._child
        if isinstance(error, PermissionDeniedError) and error.code == "model_not_allowed":
            child(m.auth_failures, "forbidden_model").inc()
        elif isinstance(error, LimitExceededError):
            child(m.rate_limited, error.scope).inc()
        if exchange.cache_result in ("hit", "miss"):
            child(m.cache_requests, exchange.cache_result).inc()
        provider = exchange.provider
        if not provider:  # a cache hit's provider is "cache": requests it answered count too
            return
        child(m.requests, provider, exchange.status, exchange.model).inc()
        child(m.duration, provider, exchange.model).observe(exchange.latency)
        child(m.overhead, provider).observe(exchange.overhead)


def _served(exchange: Exchange) -> str:
    """The model an attempt went to (a fallback's own name): upstream metrics count by it, while the
    request counters keep the model the client asked for."""
    return exchange.served_model or exchange.model
