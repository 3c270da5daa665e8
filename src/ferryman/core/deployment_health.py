"""Each deployment's recent record of successes and failures, as `/health` and operators see it.

Only failures that say something about the upstream count (timeouts, refused connections, 5xx,
throttling): a 400 caused by the client's own request leaves the deployment's record alone. The attempt
loop reads `available`: a deployment that has failed several times in a row sits out a cooldown (it is
tried only after every available deployment), and after it one request probes it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

State = Literal["unknown", "healthy", "degraded", "failing"]
FAILING_AFTER = 3  # consecutive upstream failures
COOLDOWN_SECONDS = 30.0  # how long a failing deployment is passed over before it is probed again


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
    """The status of every deployment, keyed by its label."""

    def __init__(self, cooldown_seconds: float = COOLDOWN_SECONDS) -> None:
        self._statuses: dict[str, DeploymentStatus] = {}
        self._cooldown = cooldown_seconds

    def reset(self) -> None:
        """Forget every record, as after a restart (an operator who fixed an upstream; tests)."""
        self._statuses.clear()

    def available(self, deployment: str, now: float) -> bool:
        """False while `deployment` is failing and its last failure is within the cooldown."""
        status = self._statuses.get(deployment)
        if status is None or status.state != "failing" or status.last_failure_at is None:
            return True
        return now - status.last_failure_at >= self._cooldown

    def status(self, deployment: str) -> DeploymentStatus:
        """The deployment's status (a fresh, `unknown` one before its first call)."""
        return self._statuses.setdefault(deployment, DeploymentStatus())

    def record_success(self, deployment: str) -> None:
        """An attempt on `deployment` answered."""
        status = self.status(deployment)
        status.successes += 1
        status.consecutive_failures = 0
        status.last_success_at = time.time()

    def record_failure(self, deployment: str, error_class: str) -> None:
        """An attempt on `deployment` failed for an upstream reason, of class `error_class`."""
        status = self.status(deployment)
        status.failures += 1
        status.consecutive_failures += 1
        status.last_error = error_class
        status.last_failure_at = time.time()
