"""The circuit breaker's wiring: `breaker:` → a `CircuitBreaker` that drives `ai_api_deployment_state`,
and, with Redis, the background sync that shares open circuits across replicas."""

from __future__ import annotations

from ferryman.core.breaker import STATE_CODES, BreakerConfig, BreakerSync, CircuitBreaker, CircuitState
from ferryman.observability.metrics import Metrics
from ferryman.settings import Settings
from ferryman.store.redis_breaker import RedisCircuits


def circuit_breaker(settings: Settings, metrics: Metrics) -> CircuitBreaker:
    """The breaker `settings.breaker` describes; every deployment's gauge starts at 0 (closed)."""
    options = settings.breaker
    config = BreakerConfig(
        failure_threshold=options.failure_threshold,
        failure_ratio=options.failure_ratio,
        min_requests=options.min_requests,
        window_seconds=options.window_seconds,
        cooldown_seconds=options.cooldown_seconds,
        half_open_probes=options.half_open_probes,
    )
    gauge = metrics.deployment_state
    for route in settings.models:
        for deployment in route.deployments:
            gauge.labels(deployment.label).set(STATE_CODES["closed"])

    def report(deployment: str, state: CircuitState) -> None:
        gauge.labels(deployment).set(STATE_CODES[state])

    return CircuitBreaker(config, on_change=report)


def start_breaker_sync(settings: Settings, breaker: CircuitBreaker) -> BreakerSync | None:
    """With Redis (and `breaker.shared: auto`), share open circuits through it; None otherwise."""
    if not settings.redis_url or settings.breaker.shared != "auto":
        return None
    sync = BreakerSync(
        breaker, RedisCircuits.open(settings.redis_url), settings.breaker.sync_interval_seconds
    )
    sync.start()
    return sync
