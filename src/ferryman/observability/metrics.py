"""Every Prometheus metric Ferryman exports, defined once; the seed's five keep their exact names.

The seed's alert rules and dashboards query `ai_api_requests_total{provider,status}` and friends, so
those names and labels are a public contract; extra labels (`model`, token `type`) only refine them.
No label ever carries a key or a team id: per-key numbers belong to the spend ledger, not to Prometheus.

With several worker processes, set `PROMETHEUS_MULTIPROC_DIR`; `render_latest` then aggregates the
per-process files, so `/metrics` is correct whichever worker answers the scrape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

# LLM calls take from tens of milliseconds (a cached or tiny reply) to minutes (long generations).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
SHARED_STATE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_Metric = TypeVar("_Metric", bound=MetricWrapperBase)

# Label values are providers, models, operations, error classes and limit scopes, all from the
# configuration, so the children kept stay few; the bound only guards memory against a surprise.
_MAX_CHILDREN = 10_000


class Children:
    """`metric.labels(*values)`, looked up once: `labels` checks and converts its arguments and takes
    the metric's lock on every call, for a child that never changes (Ferryman never removes one). On the
    hot path a request moves about ten children, so the lookup is most of what observing it costs."""

    def __init__(self) -> None:
        self._children: dict[tuple[object, ...], MetricWrapperBase] = {}

    def __call__(self, metric: _Metric, *values: str) -> _Metric:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= _MAX_CHILDREN:
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return cast(_Metric, child)


@dataclass(frozen=True, slots=True)
class Metrics:
    """The gateway's metric families, registered on one registry (one per app, so tests stay isolated)."""

    registry: CollectorRegistry
    requests: Counter
    duration: Histogram
    tokens: Counter
    cost: Counter
    active: Gauge
    time_to_first_token: Histogram
    overhead: Histogram
    upstream_errors: Counter
    upstream_attempts: Counter
    upstream_retries: Counter
    auth_failures: Counter
    dependency_up: Gauge
    unpriced: Counter
    invalidation_failures: Counter
    rate_limited: Counter
    budget_utilization: Gauge
    budget_alerts: Counter
    limiter_degraded: Gauge
    shared_state_seconds: Histogram
    ledger_backlog: Gauge
    deployment_state: Gauge
    cache_requests: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        """Define every family on `registry` (a fresh one by default)."""
        reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
        return cls(
            registry=reg,
            requests=Counter(
                "ai_api_requests_total", "Total API requests", ["provider", "status", "model"], registry=reg
            ),
            duration=Histogram(
                "ai_api_request_duration_seconds",
                "API request duration",
                ["provider", "model"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            tokens=Counter(
                "ai_api_tokens_total", "Total tokens used", ["provider", "model", "type"], registry=reg
            ),
            cost=Counter("ai_api_cost_total", "Total API cost in USD", ["provider", "model"], registry=reg),
            active=Gauge(
                "ai_api_active_requests",
                "Currently active requests",
                ["provider"],
                registry=reg,
                multiprocess_mode="livesum",
            ),
            time_to_first_token=Histogram(
                "ai_api_time_to_first_token_seconds",
                "Time from request to the first streamed token",
                ["provider", "model"],
                buckets=TTFT_BUCKETS,
                registry=reg,
            ),
            overhead=Histogram(
                "ai_api_gateway_overhead_seconds",
                "Time spent in the gateway, not waiting on the upstream",
                ["provider"],
                buckets=OVERHEAD_BUCKETS,
                registry=reg,
            ),
            upstream_errors=Counter(
                "ai_api_upstream_errors_total",
                "Upstream failures by class",
                ["provider", "model", "error"],
                registry=reg,
            ),
            upstream_attempts=Counter(
                "ai_api_upstream_attempts_total",
                "Calls made to upstreams, fallbacks included: the denominator of upstream error ratios",
                ["provider", "model"],
                registry=reg,
            ),
            upstream_retries=Counter(
                "ai_api_upstream_retries_total",
                "Attempts after a request's first failed, by where they went: retry (the same "
                "deployment), next (the model's next deployment), fallback (a fallback model)",
                ["provider", "model", "after"],
                registry=reg,
            ),
            auth_failures=Counter(
                "ai_api_auth_failures_total", "Rejected credentials by reason", ["reason"], registry=reg
            ),
            dependency_up=Gauge(
                "ai_api_dependency_up",
                "Whether a dependency (redis, database) answers",
                ["dependency"],
                registry=reg,
                multiprocess_mode="liveall",
            ),
            unpriced=Counter(
                "ai_api_unpriced_requests_total",
                "Requests whose model has no price, so their cost is unknown",
                ["provider", "model"],
                registry=reg,
            ),
            invalidation_failures=Counter(
                "ai_api_invalidation_failures_total",
                "Admin changes saved but not announced to other replicas (Redis refused the notice), "
                "so those replicas may honour the old key until their key cache expires it",
                registry=reg,
            ),
            budget_utilization=Gauge(
                "ai_api_budget_utilization_ratio",
                "Spent ÷ limit of the budget this replica settled last, by scope and window",
                ["scope", "window"],
                registry=reg,
                multiprocess_mode="max",
            ),
            budget_alerts=Counter(
                "ai_api_budget_alerts_total",
                "Budget threshold crossings announced (once per budget, window and threshold, fleet-wide)",
                ["scope", "window", "threshold"],
                registry=reg,
            ),
            rate_limited=Counter(
                "ai_api_rate_limited_total",
                "Requests refused by a rate limit, by the scope whose limit was reached",
                ["scope"],
                registry=reg,
            ),
            limiter_degraded=Gauge(
                "ai_api_rate_limiter_degraded",
                "1 while rate limits run on this replica's local share because Redis is unreachable",
                registry=reg,
                multiprocess_mode="max",
            ),
            shared_state_seconds=Histogram(
                "ai_api_shared_state_seconds",
                "Latency of one shared-state call (the limiter's Redis round trip), by operation",
                ["operation"],
                buckets=SHARED_STATE_BUCKETS,
                registry=reg,
            ),
            # One stream for the whole deployment: every live worker's feeder reports the same figure, so
            # workers are combined by max (a sum would count it once per worker), and "live" drops a dead
            # worker's value instead of keeping its last reading forever.
            ledger_backlog=Gauge(
                "ai_api_ledger_backlog",
                "Spend entries in Redis not yet written to the SQL ledger (pending or not yet read)",
                registry=reg,
                multiprocess_mode="livemax",
            ),
            # The circuit breaker's state: 0 closed, 1 half-open (probing), 2 open (passed over). Workers
            # keep circuits of their own (shared through Redis when configured): the worst one shows.
            deployment_state=Gauge(
                "ai_api_deployment_state",
                "Circuit breaker state of a deployment: 0 closed, 1 half-open, 2 open",
                ["deployment"],
                registry=reg,
                multiprocess_mode="livemax",
            ),
            cache_requests=Counter(
                "ai_api_cache_requests_total",
                "Response cache lookups by result (hit, miss); bypassed requests are not looked up",
                ["result"],
                registry=reg,
            ),
        )

    def render_latest(self) -> bytes:
        """The text exposition of every metric, aggregated across workers in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            aggregate = CollectorRegistry()
            multiprocess.MultiProcessCollector(aggregate)  # type: ignore[no-untyped-call]
            return generate_latest(aggregate)
        return generate_latest(self.registry)
