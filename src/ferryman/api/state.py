"""Everything a request handler needs, built once per app in the lifespan and passed down."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from opentelemetry.trace import Tracer

from ferryman.api.auth import Authenticator
from ferryman.api.dependencies import DependencyWatch
from ferryman.core.deployment_health import DeploymentHealth
from ferryman.core.estimate import InputEstimates
from ferryman.core.failover import Failover
from ferryman.core.pipeline import Pipeline
from ferryman.core.routing import Router
from ferryman.core.shared_state import SharedState
from ferryman.core.upstream import Upstream
from ferryman.observability.metrics import Metrics
from ferryman.settings import Settings
from ferryman.store.service import KeyService


@dataclass(slots=True)
class AppState:
    """The app's long-lived objects; `draining` flips once, when shutdown begins."""

    settings: Settings
    metrics: Metrics
    auth: Authenticator
    router: Router
    pipeline: Pipeline
    upstreams: list[Upstream]
    dependencies: DependencyWatch
    shared: SharedState  # counters, reservations, cache, ledger for the stages
    tracer: Tracer | None = None
    limiter_failover: Failover | None = None

    @property
    def deployment_health(self) -> DeploymentHealth:
        """Each deployment's record of successes and failures, as the attempt loop keeps it."""
        return self.pipeline.attempts.health

    started_at: float = field(default_factory=time.time)
    draining: bool = False
    keys: KeyService | None = None
    # The stages' token counters, which token counting shares (the characters rule when built bare):
    estimates: InputEstimates = field(default_factory=InputEstimates)
