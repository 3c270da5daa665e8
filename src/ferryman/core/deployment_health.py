"""Each deployment's recent record of successes and failures, and its circuit, as the attempt loop
keeps them and `/health` and operators see them.

Only failures that say something about the upstream count (timeouts, refused connections, 5xx,
throttling): a 400 caused by the client's own request leaves the deployment's record alone. Whether a
deployment is passed over is the circuit breaker's decision alone (`core/breaker.py`); the record's
`state` is a label for people (`degraded` after one failure in a row, `failing` after several or
while its circuit is not closed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ferryman.core.breaker import CircuitBreaker, CircuitView

if TYPE_CHECKING:
    from ferryman.core.routing import Target

State = Literal["unknown", "healthy", "degraded", "failing"]
FAILING_AFTER = 3  # consecutive upstream failures before the label says `failing`


@dataclass(slots=True)
class DeploymentStatus:
    """Counters and timestamps (Unix seconds) of one deployment since start-up."""

    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_success_at: float | None = None
    last_failure_at: float | None = None

    @property
    def state(self) -> State:
        """`failing` after several failures in a row, `degraded` after one, `unknown` before any traffic."""
        if self.consecutive_failures >= FAILING_AFTER:
            return "failing"
        if self.consecutive_failures:
            return "degraded"
        return "healthy" if self.successes else "unknown"


class DeploymentHealth:
    """The record of every deployment, keyed by its label, and the circuit breaker that orders them."""

    def __init__(self, breaker: CircuitBreaker | None = None) -> None:
        self._statuses: dict[str, DeploymentStatus] = {}
        self.breaker = breaker if breaker is not None else CircuitBreaker()

    def reset(self) -> None:
        """Forget every record and close every circuit, as after a restart (an operator who fixed an
        upstream; tests)."""
        self._statuses.clear()
        self.breaker.reset()

    def arrange(self, targets: list[Target]) -> list[Target]:
        """`targets` in the order the breaker allows (see `CircuitBreaker.arrange`)."""
        return self.breaker.arrange(targets)

    def status(self, deployment: str) -> DeploymentStatus:
        """The deployment's status (a fresh, `unknown` one before its first call)."""
        status = self._statuses.get(deployment)
        if status is None:
            status = self._statuses[deployment] = DeploymentStatus()
        return status

    def circuit(self, deployment: str) -> CircuitView:
        """The deployment's circuit, now."""
        return self.breaker.view(deployment)

    def label(self, deployment: str) -> State:
        """The record's label, `failing` too while the circuit is not closed."""
        state = self.status(deployment).state
        if state != "failing" and self.breaker.view(deployment).state != "closed":
            return "failing"
        return state

    def record_success(self, deployment: str) -> None:
        """An attempt on `deployment` answered."""
        status = self.status(deployment)
        status.successes += 1
        status.consecutive_failures = 0
        status.last_success_at = time.time()
        self.breaker.record_success(deployment)

    def record_failure(self, deployment: str, error_class: str) -> None:
        """An attempt on `deployment` failed for an upstream reason, of class `error_class`."""
        status = self.status(deployment)
        status.failures += 1
        status.consecutive_failures += 1
        status.last_error = error_class
        status.last_failure_at = time.time()
        self.breaker.record_failure(deployment)
