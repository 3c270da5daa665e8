"""Everything a request handler needs, built once per app in the lifespan and passed down."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from ferryman.api.app import RoutingParts
    from ferryman.api.runtime_models import ModelCatalog


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
    routing: RoutingParts | None = None  # what a rebuilt model set is made from (api/app.py)
    models: ModelCatalog | None = None  # runtime models from SQL, kept current (api/runtime_models.py)

    def use_routing(self, router: Router, pipeline: Pipeline, upstreams: list[Upstream]) -> None:
        """Serve a new model set from the next request on; no await between the assignments, so no
        request sees one without the other, and requests in flight keep the pipeline they started on."""
        self.router, self.pipeline, self.upstreams = router, pipeline, upstreams
