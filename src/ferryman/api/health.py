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
    return _json({"status": "ready", "dependencies": state.dependencies.status})


async def health(request: Request) -> Response:
    """A summary: version, uptime, dependencies and every deployment."""
    state: AppState = request.app.state.ferryman
    deployments = [
        _deployment_summary(state, name, target)
        for name in state.gateway.router.model_names
        for target in state.gateway.router.targets(name)
    ]
    body = {
        "status": _overall_status(state),
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 3),
        "redis": state.dependencies.describe("redis"),
        "database": state.dependencies.describe("database"),
        "auth": "enabled" if state.auth.enabled else "disabled (no master_key)",
        "deployments": deployments,
    }
    healthy = not state.draining and state.dependencies.ready
    return _json(body, status=200 if healthy else 503)


def _overall_status(state: AppState) -> str:
    """`draining`, `unready` (a required dependency is down), `degraded` (a degradable one is), or `ok`."""
    if state.draining:
        return "draining"
    if not state.dependencies.ready:
        return "unready"
    return "ok" if all(state.dependencies.status.values()) else "degraded"


def _deployment_summary(state: AppState, model: str, target: Target) -> dict[str, object]:
    """One deployment's identity and upstream record (error classes only: messages may quote prompts)."""
    status = state.gateway.health.status(target.deployment)
    return {
        "model": model,
        "deployment": target.deployment,
        "provider": target.provider,
        "state": status.state,
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
