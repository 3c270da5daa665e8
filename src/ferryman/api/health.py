"""Probes and metrics: `/health/live` (the process answers), `/health/ready` (send me traffic),
`/health` (a JSON summary for people), `/metrics` (Prometheus)."""

from __future__ import annotations

import hmac
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ferryman import __version__
from ferryman.api.state import AppState
from ferryman.core.routing import Target
from ferryman.errors import AuthenticationError
from ferryman.observability.metrics import CONTENT_TYPE


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def live(request: Request) -> Response:
    """Liveness: answering at all is the proof; a hung event loop fails it by not answering."""
    return _json({"status": "ok"})


async def ready(request: Request) -> Response:
    """Readiness: 503 while draining (so load balancers stop sending new requests first) or while a
    required dependency is down; a degradable one that is down is reported but keeps the replica ready."""
    state: AppState = request.app.state.ferryman
    if state.draining:
        return _json({"status": "draining"}, status=503)
    if not state.dependencies.ready:
        return _json({"status": "unready", "dependencies": state.dependencies.status}, status=503)
    # A degradable dependency down, or limits on their fail-open share: still ready, and saying so.
    degraded = not all(state.dependencies.status.values()) or _limits_degraded(state)
    return _json({"status": "degraded" if degraded else "ready", "dependencies": state.dependencies.status})


def _limits_degraded(state: AppState) -> bool:
    return state.limiter_failover is not None and state.limiter_failover.degraded


def _rate_limits(state: AppState) -> str:
    """Where rate limits count right now, for `/health`."""
    if state.limiter_failover is None:
        return "shared" if state.settings.redis_url else "in-process"
    if not state.limiter_failover.degraded:
        return "shared"
    if state.settings.limits.on_redis_failure == "fail_open":
        return "local share (Redis unreachable)"
    return "refusing (Redis unreachable)"


async def health(request: Request) -> Response:
    """A summary: version, uptime, dependencies and every deployment."""
    state: AppState = request.app.state.ferryman
    deployments = [
        _deployment_summary(state, name, target)
        for name in state.router.model_names
        for target in state.router.targets(name)
    ]
    body = {
        "status": _overall_status(state),
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 3),
        "redis": state.dependencies.describe("redis"),
        "database": state.dependencies.describe("database"),
        "invalidation": _invalidation_summary(state),
        "rate_limits": _rate_limits(state),
        "auth": "enabled" if state.auth.enabled else "disabled (no master_key)",
        "deployments": deployments,
    }
    healthy = not state.draining and state.dependencies.ready
    return _json(body, status=200 if healthy else 503)


def _overall_status(state: AppState) -> str:
    """`draining`, `unready` (a required dependency is down), `degraded` (a degradable one is, or a key
    change made here has not reached the other replicas), or `ok`."""
    if state.draining:
        return "draining"
    if not state.dependencies.ready:
        return "unready"
    undelivered = state.keys is not None and state.keys.invalidation.degraded
    healthy = all(state.dependencies.status.values()) and not undelivered and not _limits_degraded(state)
    return "ok" if healthy else "degraded"


def _invalidation_summary(state: AppState) -> dict[str, object] | None:
    """Whether key changes made here reach the other replicas: `degraded` from a notice Redis refused
    until the next one it takes (meanwhile another replica may honour a changed key, for up to
    `key_cache_ttl_seconds`)."""
    if state.keys is None:
        return None
    status = state.keys.invalidation
    return {
        "backend": status.backend,
        "degraded": status.degraded,
        "last_failure_at": status.last_failure_at.isoformat() if status.last_failure_at else None,
        "last_error": status.last_error,
        "key_cache_ttl_seconds": state.settings.key_cache_ttl_seconds,  # how long a miss can matter
    }


def _deployment_summary(state: AppState, model: str, target: Target) -> dict[str, object]:
    """One deployment's identity, upstream record (error classes only: messages may quote prompts) and
    circuit breaker state (`closed`, `half_open`, `open`)."""
    health = state.deployment_health
    status = health.status(target.deployment)
    return {
        "model": model,
        "deployment": target.deployment,
        "provider": target.provider,
        "state": health.label(target.deployment),
        "circuit": health.circuit(target.deployment).state,
        "successes": status.successes,
        "failures": status.failures,
        "consecutive_failures": status.consecutive_failures,
        "last_error": status.last_error,
    }


async def metrics(request: Request) -> Response:
    """Prometheus text exposition; with `metrics.token` set, only for scrapers that send it as Bearer."""
    state: AppState = request.app.state.ferryman
    token = state.settings.metrics.token
    if token is not None:
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token.get_secret_value()}".encode()):
            raise AuthenticationError("/metrics needs the metrics token as `Authorization: Bearer <token>`.")
    return Response(state.metrics.render_latest(), media_type=CONTENT_TYPE)


def health_routes() -> list[BaseRoute]:
    """Probe and metrics paths."""
    return [
        Route("/health", health, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
