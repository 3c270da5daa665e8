"""Routing strategies: in what order a model's deployments are tried, chosen per model by name.

- `weighted` (the default): weighted random, the primary drawn by `weight`.
- `least_busy`: fewest attempts in flight in this replica first; ties in random order.
- `lowest_latency`: lowest moving average (EWMA) of time to first token first — of the whole
  response for answers that are not streamed; deployments not yet measured are tried first (each is
  explored), and a small share of requests (`explore`) goes to a random one, so a deployment that was
  slow once is measured again.
- `most_headroom`: the largest fraction of its RPM / TPM quota left first (deployments without a quota
  have all of it); ties in random order.
- `priority`: config order — by `priority` (lower first) where given, else list order.

Under every strategy a deployment of weight 0 is a fallback only: it comes last, in config order. Each
strategy returns the full order (primary, then fallbacks) in O(deployments), built from the few
deployments of one model; the attempt loop then lets the circuit breaker move open ones to the end.
`DeploymentLoad` (an `Observer`) feeds in-flight counts and latencies from the attempt loop's events;
`HeadroomBook` is fed by `DeploymentQuotas` from each admission's `remaining` (no extra round trip).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ferryman.core.exchange import Exchange
    from ferryman.core.observer import Attempt
    from ferryman.core.routing import Target
    from ferryman.errors import ProviderError

StrategyName = Literal["weighted", "least_busy", "lowest_latency", "most_headroom", "priority"]
STRATEGIES: tuple[StrategyName, ...] = (
    "weighted",
    "least_busy",
    "lowest_latency",
    "most_headroom",
    "priority",
)
EWMA_ALPHA = 0.2  # each new latency sample's share of the average
EXPLORE = 0.05  # share of `lowest_latency` requests sent to a random deployment first
HEADROOM_REFILL_SECONDS = 60.0  # quotas are per minute: what was used is back a minute later


class Strategy(Protocol):
    """Orders one model's deployments for one request."""

    name: StrategyName

    def order(self) -> list[Target]:
        """Every deployment of the model, in the order to try them."""
        ...


class DeploymentLoad:
    """Attempts in flight and the latency EWMA per deployment, in this replica, fed as an `Observer`
    of the attempt loop (every attempt that starts ends exactly once: see `core/observer.py`)."""

    def __init__(self, alpha: float = EWMA_ALPHA) -> None:
        self.in_flight: dict[str, int] = {}
        self.latency: dict[str, float] = {}  # seconds; absent until the first sample
        self._alpha = alpha

    def record_latency(self, deployment: str, seconds: float) -> None:
        """Fold one sample into the deployment's average (the first sample is the average)."""
        previous = self.latency.get(deployment)
        self.latency[deployment] = (
            seconds if previous is None else previous + self._alpha * (seconds - previous)
        )

    def _ended(self, deployment: str) -> None:
        self.in_flight[deployment] = self.in_flight.get(deployment, 1) - 1

    def attempt_started(self, exchange: Exchange, attempt: Attempt) -> None:
        """One more in flight."""
        deployment = attempt.target.deployment
        self.in_flight[deployment] = self.in_flight.get(deployment, 0) + 1

    def calling(self, attempt: Attempt) -> AbstractContextManager[object]:
        """No context."""
        return nullcontext()

    def attempt_failed(self, exchange: Exchange, attempt: Attempt, error: ProviderError, kind: str) -> None:
        """One fewer in flight (unless it had answered: it ends when settled); a timeout is a sample
        of how slow the deployment is."""
        if attempt.answered:
            return
        self._ended(attempt.target.deployment)
        if kind == "timeout":
            self.record_latency(attempt.target.deployment, time.perf_counter() - attempt.started)

    def first_token(self, exchange: Exchange, attempt: Attempt) -> None:
        """A stream's time to first token, from the attempt's start (no clock read: the exchange has it)."""
        ttft = exchange.time_to_first_token
        if ttft is not None:
            self.record_latency(attempt.target.deployment, exchange.started + ttft - attempt.started)

    def attempt_settled(self, exchange: Exchange, attempt: Attempt) -> None:
        """One fewer in flight; a whole answer's response time is its sample."""
        deployment = attempt.target.deployment
        self._ended(deployment)
        if exchange.time_to_first_token is None:
            self.record_latency(deployment, time.perf_counter() - attempt.started)

    def attempt_abandoned(self, exchange: Exchange, attempt: Attempt) -> None:
        """One fewer in flight."""
        self._ended(attempt.target.deployment)

    def request_finished(self, exchange: Exchange, error: BaseException | None) -> None:
        """Nothing."""


class HeadroomBook:
    """The last known fraction of each deployment's quota left, from its latest admission, refilling
    linearly to full over a minute since (the quota's window), so a deployment passed over recovers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._seen: dict[str, tuple[float, float]] = {}  # deployment → (fraction left, when)
        self._clock = clock

    def note(self, deployment: str, fraction: float) -> None:
        """An admission to `deployment` left `fraction` (0 to 1) of its tightest quota."""
        self._seen[deployment] = (fraction, self._clock())

    def headroom(self, deployment: str, now: float | None = None) -> float:
        """The fraction left now (1 for a deployment never admitted, or without a quota)."""
        seen = self._seen.get(deployment)
        if seen is None:
            return 1.0
        fraction, at = seen
        now = self._clock() if now is None else now
        return min(1.0, fraction + (now - at) / HEADROOM_REFILL_SECONDS)

    def now(self) -> float:
        """The book's clock."""
        return self._clock()


def _split(targets: Sequence[Target]) -> tuple[tuple[Target, ...], tuple[Target, ...]]:
    """The deployments that may be primary, and the fallback-only ones (weight 0), in config order."""
    return tuple(t for t in targets if t.weight > 0), tuple(t for t in targets if t.weight == 0)


class Weighted:
    """Weighted random: each pick among the rest drawn by weight."""

    name: StrategyName = "weighted"

    def __init__(self, targets: Sequence[Target], rng: random.Random) -> None:
        self._weighted, self._fallbacks = _split(targets)
        self._total = sum(t.weight for t in self._weighted)
        self._rng = rng

    def order(self) -> list[Target]:
        """Draw the primary by weight, then each next one among those left."""
        left = list(self._weighted)
        total = self._total
        order: list[Target] = []
        while left:
            point = self._rng.random() * total
            index = 0
            for index, target in enumerate(left):  # noqa: B007 - the index is the pick
                point -= target.weight
                if point < 0:
                    break
            pick = left.pop(index)
            total -= pick.weight
            order.append(pick)
        order.extend(self._fallbacks)
        return order


class _Ranked:
    """Orders the primary candidates by a score (lower first), ties in random order."""

    name: StrategyName

    def __init__(self, targets: Sequence[Target], rng: random.Random) -> None:
        self._candidates, self._fallbacks = _split(targets)
        self._rng = rng

    def score(self, target: Target) -> float:
        """Lower goes first."""
        raise NotImplementedError

    def order(self) -> list[Target]:
        """Shuffled (so ties fall randomly), then sorted by score: a stable sort keeps the shuffle."""
        order = list(self._candidates)
        self._rng.shuffle(order)
        order.sort(key=self.score)
        order.extend(self._fallbacks)
        return order


class LeastBusy(_Ranked):
    """Fewest attempts in flight (in this replica) first."""

    name: StrategyName = "least_busy"

    def __init__(self, targets: Sequence[Target], rng: random.Random, load: DeploymentLoad) -> None:
        super().__init__(targets, rng)
        self._in_flight = load.in_flight

    def score(self, target: Target) -> float:
        """Attempts in flight."""
        return self._in_flight.get(target.deployment, 0)


class LowestLatency(_Ranked):
    """Lowest latency EWMA first; unmeasured deployments before every measured one."""

    name: StrategyName = "lowest_latency"

    def __init__(
        self, targets: Sequence[Target], rng: random.Random, load: DeploymentLoad, explore: float = EXPLORE
    ) -> None:
        super().__init__(targets, rng)
        self._latency = load.latency
        self._explore = explore

    def score(self, target: Target) -> float:
        """Seconds of latency; -1 (first) while unmeasured."""
        return self._latency.get(target.deployment, -1.0)

    def order(self) -> list[Target]:
        """By latency; now and then a random deployment first, so none stays unmeasured for good."""
        order = super().order()
        if self._explore and len(self._candidates) > 1 and self._rng.random() < self._explore:
            order.insert(0, order.pop(self._rng.randrange(len(self._candidates))))
        return order


class MostHeadroom(_Ranked):
    """The largest fraction of quota left first."""

    name: StrategyName = "most_headroom"

    def __init__(self, targets: Sequence[Target], rng: random.Random, book: HeadroomBook) -> None:
        super().__init__(targets, rng)
        self._book = book
        self._now = 0.0

    def score(self, target: Target) -> float:
        """Minus the fraction left (so the most goes first)."""
        return -self._book.headroom(target.deployment, self._now)

    def order(self) -> list[Target]:
        """One clock read for the whole order."""
        self._now = self._book.now()
        return super().order()


class Priority:
    """Config order: by `priority` where given (lower first), then list order."""

    name: StrategyName = "priority"

    def __init__(self, targets: Sequence[Target]) -> None:
        candidates, fallbacks = _split(targets)
        ranked = sorted(
            enumerate(candidates),
            key=lambda item: (item[1].priority is None, item[1].priority or 0, item[0]),
        )
        self._order = tuple(target for _, target in ranked) + fallbacks

    def order(self) -> list[Target]:
        """The same order every time."""
        return list(self._order)


def build_strategy(
    name: StrategyName,
    targets: Sequence[Target],
    rng: random.Random,
    load: DeploymentLoad,
    book: HeadroomBook,
) -> Strategy:
    """The strategy called `name` over one model's `targets`."""
    builders: Mapping[StrategyName, Callable[[], Strategy]] = {
        "weighted": lambda: Weighted(targets, rng),
        "least_busy": lambda: LeastBusy(targets, rng, load),
        "lowest_latency": lambda: LowestLatency(targets, rng, load),
        "most_headroom": lambda: MostHeadroom(targets, rng, book),
        "priority": lambda: Priority(targets),
    }
    return builders[name]()
