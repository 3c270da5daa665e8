"""Everything a request handler needs, built once per app in the lifespan and passed down."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ferryman.api.auth import Authenticator
from ferryman.api.dependencies import DependencyWatch
from ferryman.core.gateway import Gateway
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
    gateway: Gateway
    upstreams: list[Upstream]
    dependencies: DependencyWatch
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    keys: KeyService | None = None
