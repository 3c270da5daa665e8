"""The ASGI application factory: routes, middleware and a lifespan that owns every client."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypedDict, cast
from zoneinfo import ZoneInfo

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ferryman import __version__
from ferryman.api.admin import admin_router, handle_validation_error
from ferryman.api.admin_port import AdminPortMiddleware
from ferryman.api.anthropic_routes import anthropic_routes
from ferryman.api.auth import Authenticator
from ferryman.api.circuits import circuit_breaker, start_breaker_sync
from ferryman.api.client_ip import ForwardedHeadersMiddleware, TrustedProxies
from ferryman.api.dependencies import DependencyWatch
from ferryman.api.errors import error_response, handle_ferryman_error, handle_unexpected_error
from ferryman.api.gemini_routes import gemini_routes
from ferryman.api.health import health_routes
from ferryman.api.hot_paths import HotPaths, hot_endpoints
from ferryman.api.https import HttpsPolicyMiddleware
from ferryman.api.middleware import RequestIdMiddleware
from ferryman.api.openai_routes import openai_routes
from ferryman.api.openapi import install_openapi
from ferryman.api.responses_routes import responses_routes
from ferryman.api.runtime_models import POLL_SECONDS, POLL_SECONDS_WITH_REDIS, ModelCatalog
from ferryman.api.state import AppState
from ferryman.api.upstream_pool import UpstreamPool, target
from ferryman.api.usage import usage_routes
from ferryman.core._shield import Background
from ferryman.core.access import ModelAccess
from ferryman.core.attempts import AttemptLoop
from ferryman.core.budgets import Budgets, SpendRecord
from ferryman.core.deployment_health import DeploymentHealth
from ferryman.core.estimate import InputEstimates
from ferryman.core.failover import Failover
from ferryman.core.fallbacks import ModelFallbacks
from ferryman.core.input_caps import Caps, InputCaps
from ferryman.core.ledger import FallbackLedger, SpendLedger
from ferryman.core.limits import DeploymentQuotas, Quota, RateLimits
from ferryman.core.observer import Observer, combine
from ferryman.core.pipeline import Pipeline, Stage
from ferryman.core.response_cache import CachePolicy, ResponseCache
from ferryman.core.response_store import ResponseStorage, ResponseStore
from ferryman.core.retries import RetryBudget, RetryPolicy, RetryRules
from ferryman.core.routing import Router, Target
from ferryman.core.shared_state import Cache, Ledger, Reservations, SharedState, WindowCounters
from ferryman.core.strategies import DeploymentLoad, HeadroomBook
from ferryman.core.timeouts import ModelTimeout, ModelTimeouts
from ferryman.errors import FerrymanError, InvalidRequestError, NotFoundError
from ferryman.observability.access_log import AccessLogObserver
from ferryman.observability.budget_alerts import BudgetAlerter
from ferryman.observability.metrics import Metrics
from ferryman.observability.metrics_observer import MetricsObserver
from ferryman.observability.timed_state import TimedCounters, TimedReservations
from ferryman.observability.tracing import (
    TRACER_NAME,
    TracingMiddleware,
    TracingObserver,
    create_tracer_provider,
)
from ferryman.secret_refs import SecretRefresher
from ferryman.settings import BudgetSettings, ModelRoute, RateLimit, Settings, load_settings
from ferryman.settings import InputCaps as InputCapsSettings
from ferryman.store._redis_connect import Connected, parse_redis_url
from ferryman.store._redis_connect import connect as connect_redis
from ferryman.store.backends import open_shared_state
from ferryman.store.journal import JournalLedger
from ferryman.store.ledger_feeder import LedgerFeeder
from ferryman.store.ledger_spend import LedgerSpend
from ferryman.store.memory import MemoryCache
from ferryman.store.model_store import ModelStore
from ferryman.store.service import KeyService
from ferryman.store.sql_ledger import SqlLedger, open_ledger
from ferryman.store.sql_reservations import budget_holds
from ferryman.tokenizers import Tokenizers

log = logging.getLogger("ferryman.app")
FEEDER_REDIS_TIMEOUT = 5.0  # seconds: above the feeder's blocking read, unlike the limiter's 1 s
WORKERS_ENV = "FERRYMAN_WORKERS"  # the worker count `serve` runs, for each worker's `app_from_env`


class GatewayApp(Starlette):
    """The hot-path routes on bare Starlette, and a FastAPI app mounted under them for the rest.

    Inference, probes and metrics are plain Starlette routes: FastAPI's per-request machinery
    (dependency exit stack, body-limit and telemetry middleware) measured at ≈8 % of the gateway's CPU
    per request, and those routes use none of it. The admin API, `/docs` and `/openapi.json` live on the
    mounted FastAPI app, which documents both (see `api/openapi.py`).
    """

    def __init__(self, admin: FastAPI, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.admin = admin

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of the whole API, as `/openapi.json` serves it."""
        return self.admin.openapi()


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    tracer_provider: TracerProvider | None = None,
    extra_stages: Sequence[Stage] = (),
) -> GatewayApp:
    """Build the app for `settings`; nothing connects until the lifespan starts.

    `tracer_provider` turns tracing on with that provider (tests pass one with an in-memory exporter);
    otherwise `tracing.enabled` in the settings decides. `extra_stages` run after the built-in stages,
    just before the upstream (embedders' own policies; tests' probes).
    """
    if tracer_provider is None and settings.tracing.enabled:
        tracing = settings.tracing
        tracer_provider = create_tracer_provider(tracing.service_name, tracing.exporter, __version__)
    tracer = tracer_provider.get_tracer(TRACER_NAME, __version__) if tracer_provider is not None else None
    admin = _admin_app()
    tokenizers = Tokenizers()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The encodings load off the event loop, beside the schema check, and before serving: a request
        # would otherwise block the loop ~0.3 s an encoding.
        keys, _ = await asyncio.gather(
            KeyService.open(settings),  # migrates (or checks) the schema first
            asyncio.to_thread(tokenizers.preload, deployed_models(settings)),
        )
        assert keys.engine is not None  # noqa: S101 - open() always opens one (embedded SQLite by default)
        sql_ledger = open_ledger(keys.engine)  # the spend ledger's truth, beside keys and teams
        await sql_ledger.prepare()
        shared = await open_shared_state(settings.redis_url or "memory://")
        app_metrics = metrics or Metrics.create()
        feeder: tuple[LedgerFeeder, Connected] | None = None
        if settings.redis_url:  # spend goes to the Redis stream first; the feeder drains it into SQL
            feeder = start_ledger_feeder(settings.redis_url, sql_ledger, app_metrics)
            shared = dataclasses.replace(shared, ledger=FallbackLedger(shared.ledger, sql_ledger))
        elif settings.database_url is None and settings.data_dir != ":memory:":
            # embedded: a synced journal beside the database, moved into it in batches
            journal = JournalLedger(settings.data_path, sql_ledger, on_backlog=app_metrics.ledger_backlog.set)
            await journal.start()
            shared = dataclasses.replace(shared, ledger=journal)
        else:  # no Redis, no journal: each request's spend is committed to SQL before it is done
            shared = dataclasses.replace(shared, ledger=sql_ledger)
        local = await open_shared_state("memory://") if settings.redis_url else shared
        background = Background() if settings.redis_url else None  # remote releases, off the answer
        alerts = BudgetAlerter(app_metrics, settings.budgets.alert_webhook_url)
        services = StageServices(
            limiter_state(settings, shared, local, app_metrics),
            TimedReservations(budget_holds(settings, shared, keys.engine), app_metrics.shared_state_seconds),
            alerts,
            budget_record(sql_ledger, shared.ledger),
            InputEstimates(tokenizers),
            background,
            response_store=response_store(settings, shared),
        )
        state = build_state(settings, shared, app_metrics, tracer, keys, extra_stages, services)
        app.state.ferryman = admin.state.ferryman = state
        catalog = state.models = await start_model_catalog(state, keys, tokenizers)  # kept current
        if not state.auth.enabled:
            log.warning("no master_key configured: the gateway accepts requests without a key")
        await state.dependencies.start()
        breaker_sync = start_breaker_sync(settings, state.deployment_health.breaker)
        secrets = SecretRefresher.for_settings(settings, settings.secrets.refresh_seconds)
        await secrets.start()  # rotated keys apply to the next request (docs/secrets.md)
        try:
            yield
        finally:
            await catalog.aclose()
            await secrets.aclose()
            await state.dependencies.aclose()
            if breaker_sync is not None:
                await breaker_sync.aclose()
            if state.routing is not None:
                await state.routing.upstreams.aclose()
            if tracer_provider is not None:
                tracer_provider.shutdown()
            if background is not None:
                await background.drain()  # slots released before the connections close
            await shared.close()
            if local is not shared:
                await local.close()
            await alerts.aclose()
            if feeder is not None:
                await feeder[0].aclose()  # writes what it can to SQL before the engine goes
                await feeder[1].aclose()
            if isinstance(shared.ledger, JournalLedger):
                await shared.ledger.aclose()
            await keys.aclose()

    server = settings.server
    middleware = [
        Middleware(RequestIdMiddleware),
        # The client's address and scheme, from a trusted proxy's headers; then HSTS / https_required.
        Middleware(ForwardedHeadersMiddleware, trusted=TrustedProxies(server.trusted_proxies)),
        Middleware(
            HttpsPolicyMiddleware,
            require_https=server.require_https,
            hsts=server.hsts.header,
            plain_http_paths=server.plain_http_paths,
        ),
    ]
    if server.admin_port is not None:  # before CORS: a browser cannot even preflight the hidden side
        middleware.append(Middleware(AdminPortMiddleware, admin_port=server.admin_port))
    if server.cors.allow_origins:  # answers preflights itself, before any key check
        cors = server.cors
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cors.allow_origins,
                allow_methods=cors.allow_methods,
                allow_headers=cors.allow_headers,
                allow_credentials=cors.allow_credentials,
                expose_headers=["x-request-id", "x-ferryman-cost-usd", "x-ferryman-model"],
                max_age=cors.max_age_seconds,
            )
        )
    if tracer is not None:
        middleware.append(Middleware(TracingMiddleware, tracer=tracer))  # inner: sees the request id
    routes = [
        *openai_routes(),
        *responses_routes(),
        *anthropic_routes(),
        *gemini_routes(),
        *usage_routes(),
        *health_routes(),
        *_admin_routes(admin),
    ]
    # Innermost of ours: inference POSTs skip Starlette's exception middleware and router.
    middleware.append(Middleware(HotPaths, endpoints=hot_endpoints(routes)))
    return GatewayApp(
        admin,
        routes=routes,
        middleware=middleware,
        exception_handlers=_EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


def _admin_routes(admin: FastAPI) -> list[BaseRoute]:
    """Routes handing the admin API and the docs to `admin`, paths unchanged.

    Routes, not a catch-all mount: a mount would also claim a hot-path path called with the wrong
    method, turning its 405 into a 404.
    """
    paths = ["/admin", "/admin/{rest:path}", "/docs", "/docs/{rest:path}", "/openapi.json"]
    return [Route(path, admin) for path in paths]


def _admin_app() -> FastAPI:
    """The FastAPI app for the admin API, `/docs` and the OpenAPI document of everything."""
    admin = FastAPI(
        title="Ferryman",
        version=__version__,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        # Ferryman traces itself (observability/tracing.py: off by default and then free); FastAPI's
        # native telemetry would look up the global OTel providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    admin.include_router(admin_router())
    for error, handler in _EXCEPTION_HANDLERS.items():
        admin.add_exception_handler(error, handler)
    admin.add_exception_handler(RequestValidationError, handle_validation_error)
    install_openapi(admin)  # the Starlette hot-path routes, documented by hand
    return admin


def app_from_env() -> GatewayApp:
    """Factory for multi-worker serving: each worker process loads `FERRYMAN_CONFIG` itself, and takes
    the worker count the supervisor runs (`FERRYMAN_WORKERS`: `serve --workers` overrides the file)."""
    settings = load_settings(os.environ.get("FERRYMAN_CONFIG") or None)
    workers = os.environ.get(WORKERS_ENV)
    return create_app(settings.with_server(workers=int(workers)) if workers else settings)


@dataclass(frozen=True, slots=True)
class LimiterState:
    """Where rate limits count: the shared state, behind the Redis failure policy when it is Redis.

    `counters` and `slots` are one pair (one backend's, or one `Failover` for both): the stage takes a
    request's slot with `counters.admit(..., holds=slots)` in the same step as its windows, and releases
    it through `slots`.
    """

    counters: WindowCounters
    slots: Reservations
    failover: Failover | None = None  # present with Redis: says whether limits run on a local share


def limiter_state(
    settings: Settings, shared: SharedState, local: SharedState, metrics: Metrics
) -> LimiterState:
    """The rate limits' state: timed, and with Redis, failing over to `local` as `limits` configures."""
    counters: WindowCounters = shared.counters
    slots: Reservations = shared.reservations
    failover: Failover | None = None
    if local is not shared:

        def report(degraded: bool) -> None:
            metrics.limiter_degraded.set(1 if degraded else 0)
            if degraded:
                log.warning("shared state unreachable: rate limits now %s", settings.limits.on_redis_failure)
            else:
                log.warning("shared state reachable again: rate limits shared across replicas")

        failover = Failover(
            shared.counters,
            shared.reservations,
            local.counters,
            local.reservations,
            policy=settings.limits.on_redis_failure,
            replicas=settings.limits.expected_replicas,
            on_change=report,
        )
        counters, slots = failover, failover
    histogram = metrics.shared_state_seconds
    return LimiterState(TimedCounters(counters, histogram), TimedReservations(slots, histogram), failover)


@dataclass(frozen=True, slots=True)
class StageServices:
    """What the stages run on: the limiter's state (with its Redis failure policy), the budgets'
    reservations (never failed over: money does not fall back to a local guess), budget alerts."""

    limiter: LimiterState
    budget_holds: Reservations
    alerts: BudgetAlerter | None = None
    budget_record: SpendRecord | None = None  # the ledger lost budget counters are rebuilt from
    estimates: InputEstimates | None = None  # tokenizer counts per deployment; None: by characters
    background: Background | None = None  # where remote slot releases finish (None: awaited in place)
    response_store: Cache | None = None  # where the response cache keeps answers; None: in this process


def deployed_models(settings: Settings) -> set[tuple[str, str]]:
    """Every `(provider, upstream model)` a deployment serves: what the tokenizers must preload."""
    return {(d.provider, d.model) for route in settings.models for d in route.deployments}


def budget_record(sql_ledger: SqlLedger, ledger: Ledger) -> SpendRecord:
    """The ledger budget counters are rebuilt from: SQL, after the embedded journal is moved into it."""
    flush = ledger.flush if isinstance(ledger, JournalLedger) else None
    return LedgerSpend(sql_ledger, before_read=flush)


def _caps(caps: InputCapsSettings) -> Caps:
    return Caps(**caps.model_dump())


def pipeline_stages(
    settings: Settings, router: Router, services: StageServices, ledger: Ledger | None = None
) -> list[Stage]:
    """The request pipeline, in the order a request meets it (docs/architecture.md draws it).

    Each stage is one module in `ferryman.core`; adding one is a line here. The response cache sits
    after the budgets (a hit settles their hold at $0) and before the ledger (a hit skips it, so the
    cache records its hits itself).
    """
    limits, budgets, limiter = settings.limits, settings.budgets, services.limiter
    alerts = services.alerts
    stages: list[Stage] = [
        ModelAccess(router),  # 403 for a model the key may not use, 404 for one nobody serves
        InputCaps(  # 400 for more messages, tools, images or max_tokens than the model allows
            _caps(settings.input_caps),
            {
                route.name: _caps(settings.input_caps.over(route.input_caps))
                for route in settings.models
                if route.input_caps is not None
            },
        ),
        RateLimits(  # 429 past RPM / TPM / concurrency of key, team, end user, model, gateway
            limiter.counters,
            limiter.slots,
            global_quota=_quota(limits.global_),
            end_user_quota=_quota(limits.end_user),
            model_quotas={route.name: _quota(route.limits) for route in settings.models},
            slot_ttl=limits.slot_ttl_seconds,
            router=router,
            estimates=services.estimates,
            background=services.background,
        ),
        Budgets(  # 429 insufficient_quota unless the worst case fits every budget; settles on exit
            services.budget_holds,
            router,
            global_budget=_budget(budgets.global_),
            end_user_budget=_budget(budgets.end_user),
            end_user_budgets={user: _budget(budget) for user, budget in budgets.end_users.items()},
            timezone=ZoneInfo(budgets.timezone),
            thresholds=budgets.alert_thresholds,
            hold_ttl=budgets.hold_ttl_seconds,
            on_alert=alerts.alert if alerts is not None else lambda alert: None,
            on_level=alerts.level if alerts is not None else lambda budget, ratio: None,
            record=services.budget_record,
            estimates=services.estimates,
        ),
    ]
    if cached := cache_policies(settings):  # answers a repeat at $0: after the budgets, before the ledger
        store = services.response_store or MemoryCache(max_bytes=settings.cache.max_bytes)
        stages.append(ResponseCache(store, cached, scope=settings.cache.scope, ledger=ledger))
    if ledger is not None:
        stages.append(SpendLedger(ledger))  # exits first: spend is on record before the answer is done
    return stages


def cache_policies(settings: Settings) -> dict[str, CachePolicy]:
    """Each cached model's policy: `cache:`, overridden field by field by the model's own `cache`."""
    top, policies = settings.cache, {}
    for route in settings.models:
        own = route.cache
        if own is None:
            if top.enabled:
                policies[route.name] = CachePolicy(top.ttl_seconds, top.cache_nonzero_temperature)
            continue
        if own.enabled if own.enabled is not None else top.enabled:
            nonzero = own.cache_nonzero_temperature
            policies[route.name] = CachePolicy(
                own.ttl_seconds or top.ttl_seconds,
                top.cache_nonzero_temperature if nonzero is None else nonzero,
            )
    return policies


def response_store(settings: Settings, shared: SharedState) -> Cache:
    """The response cache's backend: the shared state's cache (Redis) or one bounded to this process."""
    if settings.cache.backend == "redis":
        return shared.cache
    return MemoryCache(max_bytes=settings.cache.max_bytes)


def start_ledger_feeder(url: str, ledger: SqlLedger, metrics: Metrics) -> tuple[LedgerFeeder, Connected]:
    """The background writer from the Redis ledger stream into SQL, on a client of its own whose
    reads may block longer than the limiter's short timeout."""
    target = dataclasses.replace(parse_redis_url(url), timeout=FEEDER_REDIS_TIMEOUT)
    connected = connect_redis(target)
    feeder = LedgerFeeder(
        cast(Redis, connected.client), ledger, prefix=target.prefix, on_backlog=metrics.ledger_backlog.set
    )
    feeder.start()
    return feeder, connected


def _budget(budget: BudgetSettings | None) -> tuple[float | None, float | None]:
    return (budget.daily_usd, budget.monthly_usd) if budget is not None else (None, None)


def deployment_quotas(
    settings: Settings,
    limiter: LimiterState,
    estimates: InputEstimates | None = None,
    headroom: HeadroomBook | None = None,
) -> DeploymentQuotas | None:
    """The upstream quotas of deployments that declare one; None when none does (no lookups at all)."""
    quotas = {
        deployment.label: _quota(deployment.limits)
        for route in settings.models
        for deployment in route.deployments
        if deployment.limits is not None
    }
    if not quotas:
        return None
    return DeploymentQuotas(
        limiter.counters, limiter.slots, quotas, settings.limits.slot_ttl_seconds, estimates, headroom
    )


class Resilience(TypedDict):
    """The attempt loop's retries, fallbacks and timeouts, as `resilience` builds them from the config."""

    policy: RetryPolicy
    retry_budget: RetryBudget
    fallbacks: ModelFallbacks
    timeouts: ModelTimeouts


def resilience(settings: Settings) -> Resilience:
    """Retries with their budget, fallback models and timeouts, from `retries:` and `models[]`."""
    retries = settings.retries
    rules = RetryRules(
        retries.max_attempts_per_deployment, retries.base_delay_seconds, retries.max_delay_seconds
    )
    return Resilience(
        policy=RetryPolicy(rules),
        retry_budget=RetryBudget(
            retries.budget_ratio, retries.budget_window_seconds, retries.min_retries_per_second
        ),
        fallbacks=ModelFallbacks(
            {route.name: route.fallbacks for route in settings.models},
            [route.name for route in settings.models],
        ),
        timeouts=ModelTimeouts(
            {
                route.name: ModelTimeout(route.timeout_seconds, route.first_token_timeout_seconds)
                for route in settings.models
            }
        ),
    )


def _quota(limit: RateLimit | None) -> Quota:
    return Quota(limit.rpm, limit.tpm, limit.max_parallel) if limit is not None else Quota()


def build_observer(metrics: Metrics, tracer: Tracer | None, load: DeploymentLoad | None = None) -> Observer:
    """Everything that watches requests: metrics, traces (when on), the access log, and the routing
    strategies' in-flight and latency figures."""
    observers: list[Observer] = [MetricsObserver(metrics)]
    if tracer is not None:
        observers.append(TracingObserver(tracer))
    observers.append(AccessLogObserver())
    if load is not None:
        observers.append(load)
    return combine(observers)


@dataclass(frozen=True, slots=True)
class RoutingParts:
    """What every model set of an app shares: a rebuild (runtime models changed) makes a new router and
    pipeline from these, so circuits, in-flight figures, the retry budget and clients carry over."""

    settings: Settings  # the config file's: its `models` are the read-only part of every model set
    services: StageServices
    observer: Observer
    health: DeploymentHealth
    storage: ResponseStorage
    load: DeploymentLoad
    headroom: HeadroomBook
    retry_budget: RetryBudget
    upstreams: UpstreamPool
    metrics: Metrics
    ledger: Ledger | None = None
    extra_stages: Sequence[Stage] = ()


def build_routing(parts: RoutingParts, models: Sequence[ModelRoute]) -> tuple[Router, Pipeline]:
    """A router and a pipeline for `models`: the objects requests meet, built whole, so swapping them
    in is one step and a request in flight keeps the ones it started with."""
    base = parts.settings
    settings = base if models is base.models else base.model_copy(update={"models": list(models)})
    routes: dict[str, list[Target]] = {}
    gauge, from_file = parts.metrics.deployment_state, {id(route) for route in base.models}
    for route in settings.models:
        for deployment in route.deployments:
            routes.setdefault(route.name, []).append(target(parts.upstreams.get(deployment), deployment))
            if id(route) not in from_file:
                gauge.labels(deployment.label).set(0)  # closed, like every config deployment at start
    strategies = {route.name: route.strategy for route in settings.models}
    router = Router(routes, strategies=strategies, load=parts.load, headroom=parts.headroom)
    services = parts.services
    stages = [
        parts.storage,
        *pipeline_stages(settings, router, services, parts.ledger),
        *parts.extra_stages,
    ]
    attempts = AttemptLoop(
        router,
        parts.observer,
        health=parts.health,
        quotas=deployment_quotas(settings, services.limiter, services.estimates, parts.headroom),
        **(resilience(settings) | {"retry_budget": parts.retry_budget}),
    )
    return router, Pipeline(stages, attempts, parts.observer)


def build_state(
    settings: Settings,
    shared: SharedState,
    metrics: Metrics,
    tracer: Tracer | None = None,
    keys: KeyService | None = None,
    extra_stages: Sequence[Stage] = (),
    services: StageServices | None = None,
) -> AppState:
    """Create every upstream client and the objects requests share."""
    load, headroom = DeploymentLoad(), HeadroomBook()
    services = services or StageServices(
        LimiterState(shared.counters, shared.reservations),
        shared.reservations,
        response_store=response_store(settings, shared),
    )
    parts = RoutingParts(
        settings=settings,
        services=services,
        observer=build_observer(metrics, tracer, load),
        health=DeploymentHealth(circuit_breaker(settings, metrics)),
        # First, so it also stores answers a later stage gave (a response-cache hit):
        storage=ResponseStorage(ResponseStore(shared.cache, settings.responses.ttl_seconds)),
        load=load,
        headroom=headroom,
        retry_budget=resilience(settings)["retry_budget"],
        upstreams=UpstreamPool(settings, tracer),
        metrics=metrics,
        ledger=shared.ledger,
        extra_stages=extra_stages,
    )
    router, pipeline = build_routing(parts, settings.models)
    master = settings.master_key.get_secret_value() if settings.master_key else None
    return AppState(
        settings=settings,
        metrics=metrics,
        auth=Authenticator(master, metrics, keys, tracer),
        router=router,
        pipeline=pipeline,
        tracer=tracer,
        limiter_failover=services.limiter.failover,
        shared=shared,
        upstreams=parts.upstreams.clients,
        keys=keys,
        estimates=services.estimates or InputEstimates(),
        dependencies=DependencyWatch(
            keys.check_dependencies if keys is not None else _no_dependencies,
            metrics,
            settings.health.required,
            settings.health.check_interval_seconds,
        ),
        routing=parts,
    )


async def start_model_catalog(
    state: AppState, keys: KeyService, tokenizers: Tokenizers | None = None
) -> ModelCatalog:
    """Serve the runtime models in SQL beside the config file's, rebuilt whenever any replica changes
    them (their encodings loaded off the event loop first, as the config file's are at start-up)."""
    parts, engine = state.routing, keys.engine
    assert parts is not None and engine is not None  # noqa: S101 - build_state and KeyService.open set them

    async def rebuild(models: Sequence[ModelRoute]) -> None:
        if tokenizers is not None:
            pairs = {(d.provider, d.model) for route in models for d in route.deployments}
            await asyncio.to_thread(tokenizers.preload, pairs)
        router, pipeline = build_routing(parts, models)
        parts.upstreams.keep_only([d for route in models for d in route.deployments])
        state.use_routing(router, pipeline, parts.upstreams.clients)
        await parts.upstreams.close_retired()

    poll = POLL_SECONDS_WITH_REDIS if keys.uses_redis else POLL_SECONDS
    catalog = ModelCatalog(state.settings, ModelStore(engine), rebuild, poll_seconds=poll)
    keys.on_models_changed(catalog.notice)
    await catalog.start()
    return catalog


async def _no_dependencies() -> dict[str, bool]:
    return {}


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


_EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    FerrymanError: handle_ferryman_error,
    HTTPException: _handle_http_exception,
    Exception: handle_unexpected_error,
}
