"""The ASGI application factory: routes, middleware and a lifespan that owns every client."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ferryman import __version__
from ferryman.api.admin import admin_router, handle_validation_error
from ferryman.api.anthropic_routes import anthropic_routes
from ferryman.api.auth import Authenticator
from ferryman.api.dependencies import DependencyWatch
from ferryman.api.errors import error_response, handle_ferryman_error, handle_unexpected_error
from ferryman.api.gemini_routes import gemini_routes
from ferryman.api.health import health_routes
from ferryman.api.middleware import RequestIdMiddleware
from ferryman.api.openai_routes import openai_routes
from ferryman.api.openapi import install_openapi
from ferryman.api.state import AppState
from ferryman.core.gateway import Gateway
from ferryman.core.pricing import Price, price_for
from ferryman.core.routing import Router, Target
from ferryman.core.upstream import Upstream
from ferryman.errors import FerrymanError, InvalidRequestError, NotFoundError
from ferryman.observability.metrics import Metrics
from ferryman.observability.tracing import TRACER_NAME, TracingMiddleware, create_tracer_provider
from ferryman.providers import create_provider
from ferryman.settings import Deployment, Settings, load_settings
from ferryman.store.service import KeyService

log = logging.getLogger("ferryman.app")


def create_app(
    settings: Settings, metrics: Metrics | None = None, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    """Build the app for `settings`; nothing connects until the lifespan starts.

    `tracer_provider` turns tracing on with that provider (tests pass one with an in-memory exporter);
    otherwise `tracing.enabled` in the settings decides.
    """
    if tracer_provider is None and settings.tracing.enabled:
        tracing = settings.tracing
        tracer_provider = create_tracer_provider(tracing.service_name, tracing.exporter, __version__)
    tracer = tracer_provider.get_tracer(TRACER_NAME, __version__) if tracer_provider is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = await KeyService.open(settings)  # migrates (or checks) the schema first
        state = build_state(settings, metrics or Metrics.create(), tracer, keys)
        app.state.ferryman = state
        if not state.auth.enabled:
            log.warning("no master_key configured: the gateway accepts requests without a key")
        await state.dependencies.start()
        try:
            yield
        finally:
            await state.dependencies.aclose()
            for upstream in state.upstreams:
                await upstream.aclose()
            if tracer_provider is not None:
                tracer_provider.shutdown()
            await keys.aclose()

    app = FastAPI(
        title="Ferryman",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        # Ferryman traces itself (observability/tracing.py: off by default and then free); FastAPI's
        # native telemetry would look up the global OTel providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.router.routes.extend([*openai_routes(), *anthropic_routes(), *gemini_routes(), *health_routes()])
    app.include_router(admin_router())
    if tracer is not None:
        app.add_middleware(TracingMiddleware, tracer=tracer)  # inner: sees the request id set outside
    app.add_middleware(RequestIdMiddleware)
    app.add_exception_handler(FerrymanError, handle_ferryman_error)
    app.add_exception_handler(HTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(Exception, handle_unexpected_error)
    install_openapi(app)  # the Starlette hot-path routes, documented by hand
    return app


def app_from_env() -> FastAPI:
    """Factory for multi-worker serving: each worker process loads `FERRYMAN_CONFIG` itself."""
    return create_app(load_settings(os.environ.get("FERRYMAN_CONFIG") or None))


def build_state(
    settings: Settings, metrics: Metrics, tracer: Tracer | None = None, keys: KeyService | None = None
) -> AppState:
    """Create every upstream client and the objects requests share."""
    upstreams: list[Upstream] = []
    routes: dict[str, list[Target]] = {}
    for route in settings.models:
        for deployment in route.deployments:
            upstream = create_provider(deployment, propagate_trace=tracer is not None)
            upstreams.append(upstream)
            routes.setdefault(route.name, []).append(_target(upstream, deployment))
    gateway = Gateway(Router(routes), metrics, tracer)
    master = settings.master_key.get_secret_value() if settings.master_key else None
    return AppState(
        settings=settings,
        metrics=metrics,
        auth=Authenticator(master, metrics, keys, tracer),
        gateway=gateway,
        upstreams=upstreams,
        keys=keys,
        dependencies=DependencyWatch(
            keys.check_dependencies if keys is not None else _no_dependencies,
            metrics,
            settings.health.required,
            settings.health.check_interval_seconds,
        ),
    )


async def _no_dependencies() -> dict[str, bool]:
    return {}


def _target(upstream: Upstream, deployment: Deployment) -> Target:
    override = deployment.price
    price = price_for(
        deployment.model,
        Price(override.input_per_mtok, override.output_per_mtok, override.cached_input_per_mtok)
        if override
        else None,
    )
    return Target(
        upstream=upstream,
        provider=deployment.provider,
        deployment=deployment.label,
        upstream_model=deployment.model,
        price=price,
        weight=deployment.weight,
    )


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 / 405 in our error shape."""
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class only
    if exc.status_code == 404:
        return error_response(NotFoundError(f"No route {request.url.path}", code="route_not_found"))
    error = InvalidRequestError(
        str(exc.detail), code="method_not_allowed" if exc.status_code == 405 else None
    )
    error.status = exc.status_code
    return error_response(error)
