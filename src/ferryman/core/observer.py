"""What the core tells the outside about a request as it runs: the observer interface, declared here.

Metrics, traces and the access log (`ferryman.observability`) implement `Observer`; the core calls it at
fixed points and never imports Prometheus, OpenTelemetry or a log formatter itself.

Every attempt that starts ends exactly once: in `attempt_failed` while it has not answered, in
`attempt_abandoned` when it is cancelled before answering, or in `attempt_settled` once it has (usage
known). A stream that breaks after its first batch has answered: it reports `attempt_failed` (with
`attempt.answered` true) and then `attempt_settled` for what it used. So an implementation may hold
per-attempt state (an open span, an active-requests gauge) from `attempt_started` to that end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ferryman.core.exchange import Exchange
from ferryman.core.routing import Target
from ferryman.errors import ProviderError

if TYPE_CHECKING:
    from ferryman.core.limits import QuotaGrant


@dataclass(slots=True, eq=False)
class Attempt:
    """One call to one deployment; `number` counts from 1 across the whole request, fallbacks included.

    Compared by identity (`eq=False`), so an observer can key its per-attempt state by the attempt.
    """

    number: int
    target: Target
    # What led to it after the previous attempt failed: "retry" (the same deployment again), "next"
    # (the model's next deployment) or "fallback" (a fallback model's); None for a request's first.
    after: str | None = None
    started: float = field(default_factory=time.perf_counter)
    answered: bool = False
    grant: QuotaGrant | None = None  # what the attempt took from its deployment's quota


class Observer(Protocol):
    """Receives a request's events; each method must be fast and must not raise."""

    def attempt_started(self, exchange: Exchange, attempt: Attempt) -> None:
        """An upstream call is about to be made."""
        ...

    def calling(self, attempt: Attempt) -> AbstractContextManager[object]:
        """A context the upstream call runs in (a tracer makes the attempt's span current in it)."""
        ...

    def attempt_failed(self, exchange: Exchange, attempt: Attempt, error: ProviderError, kind: str) -> None:
        """The attempt failed; `kind` is its failure class (`timeout`, `status_5xx`, …)."""
        ...

    def first_token(self, exchange: Exchange, attempt: Attempt) -> None:
        """The first token of a streamed answer arrived (`exchange.time_to_first_token` is set)."""
        ...

    def attempt_settled(self, exchange: Exchange, attempt: Attempt) -> None:
        """The attempt's usage and cost are known (`exchange.usage`, `exchange.cost`)."""
        ...

    def attempt_abandoned(self, exchange: Exchange, attempt: Attempt) -> None:
        """The attempt was cancelled before it answered (the client went away)."""
        ...

    def request_finished(self, exchange: Exchange, error: BaseException | None) -> None:
        """The request is over, answered or refused; called exactly once per request."""
        ...


class NullObserver:
    """Observes nothing: for tests and embedders that want none of the outputs."""

    def attempt_started(self, exchange: Exchange, attempt: Attempt) -> None:
        """Nothing."""

    def calling(self, attempt: Attempt) -> AbstractContextManager[object]:
        """No context."""
        return nullcontext()

    def attempt_failed(self, exchange: Exchange, attempt: Attempt, error: ProviderError, kind: str) -> None:
        """Nothing."""

    def first_token(self, exchange: Exchange, attempt: Attempt) -> None:
        """Nothing."""

    def attempt_settled(self, exchange: Exchange, attempt: Attempt) -> None:
        """Nothing."""

    def attempt_abandoned(self, exchange: Exchange, attempt: Attempt) -> None:
        """Nothing."""

    def request_finished(self, exchange: Exchange, error: BaseException | None) -> None:
        """Nothing."""


class Observers:
    """Several observers as one, called in the order given."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)

    def attempt_started(self, exchange: Exchange, attempt: Attempt) -> None:
        """Tell each observer."""
        for observer in self._observers:
            observer.attempt_started(exchange, attempt)

    def calling(self, attempt: Attempt) -> AbstractContextManager[object]:
        """Every observer's context, nested in order."""
        stack = ExitStack()
        for observer in self._observers:
            stack.enter_context(observer.calling(attempt))
        return stack

    def attempt_failed(self, exchange: Exchange, attempt: Attempt, error: ProviderError, kind: str) -> None:
        """Tell each observer."""
        for observer in self._observers:
            observer.attempt_failed(exchange, attempt, error, kind)

    def first_token(self, exchange: Exchange, attempt: Attempt) -> None:
        """Tell each observer."""
        for observer in self._observers:
            observer.first_token(exchange, attempt)

    def attempt_settled(self, exchange: Exchange, attempt: Attempt) -> None:
        """Tell each observer."""
        for observer in self._observers:
            observer.attempt_settled(exchange, attempt)

    def attempt_abandoned(self, exchange: Exchange, attempt: Attempt) -> None:
        """Tell each observer."""
        for observer in self._observers:
            observer.attempt_abandoned(exchange, attempt)

    def request_finished(self, exchange: Exchange, error: BaseException | None) -> None:
        """Tell each observer."""
        for observer in self._observers:
            observer.request_finished(exchange, error)


def combine(observers: Sequence[Observer]) -> Observer:
    """One observer standing for `observers` (no fan-out wrapper when there is only one)."""
    if not observers:
        return NullObserver()
    if len(observers) == 1:
        return observers[0]
    return Observers(observers)
