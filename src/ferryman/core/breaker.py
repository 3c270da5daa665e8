"""A circuit breaker per deployment: closed → open on failures → half-open after a cooldown → closed.

A circuit opens after `failure_threshold` upstream failures in a row, or when at least `min_requests`
attempts in the current `window_seconds` failed at `failure_ratio` or worse. An open deployment is
moved to the end of every order for `cooldown_seconds` (still tried when everything before it has
failed: an outage of all is still attempted). Then it is half-open: `half_open_probes` requests try it
first, the others keep passing it over; a probe's success closes it, its failure opens it again. Any
success closes it — also one that came as a last resort while it was open.

Only failures that say something about the upstream count (the attempt loop records `retryable` ones).
Decisions are made from this replica's own attempts; the *open* state is shared through
`SharedCircuits` (Redis) by `BreakerSync`, off the request path: a transition is written when it
happens, and every replica reads the fleet's open circuits every `interval` seconds, so one replica's
discovery protects all of them within a second, without a round trip per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from ferryman.errors import SharedStateUnavailableError

if TYPE_CHECKING:
    from ferryman.core.routing import Target

log = logging.getLogger("ferryman.breaker")

CircuitState = Literal["closed", "half_open", "open"]
STATE_CODES: Mapping[CircuitState, int] = {"closed": 0, "half_open": 1, "open": 2}
"""How `ai_api_deployment_state` encodes a circuit's state."""
_REMOTE_CLOSE_SLACK = 1.0  # seconds: an open circuit gone from Redis this early was closed elsewhere


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When circuits open and how long they stay open (see the module docstring)."""

    failure_threshold: int = 5
    failure_ratio: float = 0.5
    min_requests: int = 10
    window_seconds: float = 30.0
    cooldown_seconds: float = 30.0
    half_open_probes: int = 1


@dataclass(slots=True)
class Circuit:
    """One deployment's circuit; times are the breaker's clock (monotonic seconds)."""

    state: CircuitState = "closed"
    consecutive_failures: int = 0
    window_started: float = 0.0
    window_requests: int = 0
    window_failures: int = 0
    open_until: float = 0.0
    probes: int = 0  # probes let through while half-open
    probes_lapse_at: float = 0.0  # a probe that never reported back stops counting then
    times_opened: int = 0
    shared: bool = False  # this opening is in the shared store (written by us or read from it)


@dataclass(frozen=True, slots=True)
class CircuitView:
    """A circuit as `/health`, the admin API and metrics show it."""

    state: CircuitState
    consecutive_failures: int
    window_requests: int
    window_failures: int
    retry_in_seconds: float | None  # while open: until it turns half-open
    times_opened: int


_PASS, _PROBE, _SKIP = 0, 1, 2


class CircuitBreaker:
    """Every deployment's circuit, and the order they impose on a request's deployments."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, CircuitState], None] | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._on_change = on_change
        self._circuits: dict[str, Circuit] = {}
        self._unclosed: set[str] = set()  # empty (the usual case): `arrange` returns at once
        self._unpublished_closes: set[str] = set()
        self.wake: Callable[[], None] | None = None  # `BreakerSync` asks to hear of transitions

    def arrange(self, targets: list[Target]) -> list[Target]:
        """`targets` with open deployments (and half-open ones without a probe to spare) moved to the
        end; a half-open deployment this request probes moved to the front, so the probe happens."""
        if len(targets) == 1 or not self._unclosed:
            return targets
        now = self._clock()
        probes: list[Target] = []
        usable: list[Target] = []
        skipped: list[Target] = []
        for target in targets:
            verdict = self._admit(target.deployment, now)
            (usable, probes, skipped)[verdict].append(target)
        if not probes and not skipped:
            return targets
        return probes + usable + skipped

    def _admit(self, deployment: str, now: float) -> int:
        circuit = self._circuits.get(deployment)
        if circuit is None or circuit.state == "closed":
            return _PASS
        if circuit.state == "open":
            if now < circuit.open_until:
                return _SKIP
            self._transition(deployment, circuit, "half_open")
            circuit.probes = 0
        if circuit.probes >= self.config.half_open_probes and now < circuit.probes_lapse_at:
            return _SKIP
        if now >= circuit.probes_lapse_at:
            circuit.probes = 0
        circuit.probes += 1
        circuit.probes_lapse_at = now + self.config.cooldown_seconds
        return _PROBE

    def record_success(self, deployment: str) -> None:
        """An attempt on `deployment` answered: counted, and a circuit not closed closes."""
        circuit = self._circuit(deployment)
        if circuit.state != "closed":
            self._close(deployment, circuit)
            return
        self._roll(circuit, self._clock())
        circuit.window_requests += 1
        circuit.consecutive_failures = 0

    def record_failure(self, deployment: str) -> None:
        """An attempt on `deployment` failed for an upstream reason: counted, and maybe it opens."""
        circuit = self._circuit(deployment)
        now = self._clock()
        if circuit.state != "closed":  # a probe (or a last resort) failed: open for another cooldown
            self._open(deployment, circuit, now)
            return
        self._roll(circuit, now)
        circuit.window_requests += 1
        circuit.window_failures += 1
        circuit.consecutive_failures += 1
        if circuit.consecutive_failures >= self.config.failure_threshold or self._ratio_tripped(circuit):
            self._open(deployment, circuit, now)

    def _ratio_tripped(self, circuit: Circuit) -> bool:
        config = self.config
        return (
            circuit.window_requests >= config.min_requests
            and circuit.window_failures >= config.failure_ratio * circuit.window_requests
        )

    def _roll(self, circuit: Circuit, now: float) -> None:
        """Start a new window once the current one is over (tumbling windows: cheap and bounded)."""
        if now - circuit.window_started >= self.config.window_seconds:
            circuit.window_started = now
            circuit.window_requests = circuit.window_failures = 0

    def view(self, deployment: str) -> CircuitView:
        """The deployment's circuit now (a closed one before its first attempt)."""
        circuit = self._circuits.get(deployment) or Circuit()
        state, retry_in = circuit.state, None
        if state == "open":
            left = circuit.open_until - self._clock()
            state, retry_in = ("open", round(left, 3)) if left > 0 else ("half_open", None)
        return CircuitView(
            state,
            circuit.consecutive_failures,
            circuit.window_requests,
            circuit.window_failures,
            retry_in,
            circuit.times_opened,
        )

    def reset(self, deployment: str | None = None) -> None:
        """Close `deployment`'s circuit (every circuit for None) and forget its counts, fleet-wide."""
        names = [deployment] if deployment is not None else list(self._circuits)
        for name in names:
            circuit = self._circuits.get(name)
            if circuit is not None and circuit.state != "closed":
                self._close(name, circuit)
            self._circuits.pop(name, None)

    # The shared store's side, driven by `BreakerSync`.

    def apply_shared(self, open_for: Mapping[str, float]) -> None:
        """Take the fleet's open circuits (`deployment → seconds left`): each one opens here too; one
        this replica knew to be shared that is gone early was closed by another replica's probe."""
        now = self._clock()
        for deployment, seconds in open_for.items():
            if deployment in self._unpublished_closes:
                continue  # closed here after the store was read: the close is newer, and is on its way
            circuit = self._circuit(deployment)
            until = now + seconds
            if circuit.state != "open":
                self._open(deployment, circuit, now, until=until, shared=True)
            elif until > circuit.open_until:
                circuit.open_until = until
            circuit.shared = True
        for deployment in list(self._unclosed):
            circuit = self._circuits[deployment]
            gone_early = circuit.open_until - now > _REMOTE_CLOSE_SLACK
            if deployment not in open_for and circuit.shared and circuit.state == "open" and gone_early:
                self._close(deployment, circuit, publish=False)

    def unpublished(self) -> tuple[dict[str, float], set[str]]:
        """What the shared store has not heard yet: open circuits (`deployment → seconds left`) and
        deployments closed here since."""
        now = self._clock()
        opens = {
            name: circuit.open_until - now
            for name in self._unclosed
            if not (circuit := self._circuits[name]).shared
            and circuit.state == "open"
            and circuit.open_until > now
        }
        return opens, set(self._unpublished_closes)

    def published(self, opens: Mapping[str, float], closes: set[str]) -> None:
        """The shared store took `opens` and `closes` (as `unpublished` gave them)."""
        for name in opens:
            circuit = self._circuits.get(name)
            if circuit is not None and circuit.state == "open":
                circuit.shared = True
        self._unpublished_closes -= closes

    def _circuit(self, deployment: str) -> Circuit:
        circuit = self._circuits.get(deployment)
        if circuit is None:
            circuit = self._circuits[deployment] = Circuit(window_started=self._clock())
        return circuit

    def _open(
        self,
        deployment: str,
        circuit: Circuit,
        now: float,
        *,
        until: float | None = None,
        shared: bool = False,
    ) -> None:
        circuit.open_until = until if until is not None else now + self.config.cooldown_seconds
        circuit.shared = shared
        circuit.probes = 0
        self._unpublished_closes.discard(deployment)
        if circuit.state != "open":
            circuit.times_opened += 1
            log.warning(
                "circuit opened: deployment passed over",
                extra={"deployment": deployment, "seconds": round(circuit.open_until - now, 3)},
            )
        self._transition(deployment, circuit, "open")
        self._notify()

    def _close(self, deployment: str, circuit: Circuit, *, publish: bool = True) -> None:
        shared = circuit.shared
        circuit.consecutive_failures = circuit.window_failures = circuit.window_requests = 0
        circuit.window_started = self._clock()
        circuit.probes = 0
        circuit.shared = False
        log.warning("circuit closed: deployment back in rotation", extra={"deployment": deployment})
        self._transition(deployment, circuit, "closed")
        if publish and (shared or self.wake is not None):
            self._unpublished_closes.add(deployment)
            self._notify()

    def _transition(self, deployment: str, circuit: Circuit, state: CircuitState) -> None:
        if circuit.state == state:
            return
        circuit.state = state
        if state == "closed":
            self._unclosed.discard(deployment)
        else:
            self._unclosed.add(deployment)
        if self._on_change is not None:
            self._on_change(deployment, state)

    def _notify(self) -> None:
        if self.wake is not None:
            self.wake()


class SharedCircuits(Protocol):
    """Where replicas share open circuits (Redis: `store/redis_breaker.py`). Each call is one round
    trip; a failure raises `SharedStateUnavailableError`."""

    async def open_circuits(self) -> dict[str, float]:
        """Every deployment whose circuit some replica opened, and the seconds it stays open."""
        ...

    async def publish(self, opens: Mapping[str, float], closes: set[str]) -> None:
        """Record `opens` (`deployment → seconds it stays open`) and drop `closes`, in one call."""
        ...

    async def aclose(self) -> None:
        """Close the connection."""
        ...


class BreakerSync:
    """Keeps a breaker in step with the shared store: writes its transitions as they happen, reads
    the fleet's open circuits every `interval` seconds. A store that fails leaves the breaker on its
    own (local) state, logged once, until the store answers again; no request ever waits on it."""

    def __init__(self, breaker: CircuitBreaker, shared: SharedCircuits, interval: float = 0.5) -> None:
        self._breaker = breaker
        self._shared = shared
        self._interval = interval
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.degraded = False

    def start(self) -> None:
        """Begin syncing in the background."""
        self._breaker.wake = self._changed.set
        self._task = asyncio.create_task(self._run(), name="ferryman-breaker-sync")

    async def sync_once(self) -> None:
        """Write what the store has not heard, then read the fleet's open circuits."""
        opens, closes = self._breaker.unpublished()
        try:
            if opens or closes:
                await self._shared.publish(opens, closes)
                self._breaker.published(opens, closes)
            open_for = await self._shared.open_circuits()
        except SharedStateUnavailableError as exc:
            if not self.degraded:
                log.warning("circuit breaker state not shared: %s; deciding locally", exc.message)
            self.degraded = True
            return
        if self.degraded:
            log.warning("circuit breaker state shared across replicas again")
        self.degraded = False
        self._breaker.apply_shared(open_for)

    async def aclose(self) -> None:
        """Stop syncing and close the store."""
        self._breaker.wake = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._shared.aclose()

    async def _run(self) -> None:
        while True:
            await self.sync_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._changed.wait()
            self._changed.clear()
