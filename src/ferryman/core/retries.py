"""Retries of the same deployment: which failures, after how long, and how many the gateway can afford.

The attempt loop asks its `AttemptPolicy` what to do after each failure; `RetryPolicy` is the one the
app installs. In order, a failure is

1. retried on the same deployment — if it may pass (429, 5xx, a timeout, a dropped connection), the
   deployment has tries left (`max_attempts_per_deployment`), and the wait fits: the upstream's
   `Retry-After` when it sent one, else exponential backoff with full jitter; a `Retry-After` longer
   than `max_delay` (or than the request has left) is not waited for;
2. else sent to the next deployment of the model, then to the next fallback model (`Decision("next")`);
3. a refusal only another model might not repeat (context window, content policy) skips straight to the
   next fallback model (`Decision("fallback")`); any other client error gives up at once.

Every retry of step 1 must also fit the `RetryBudget`: over a sliding window, retries may add at most
`ratio` (20 %) to the requests' first attempts, plus a small floor per second so that a quiet gateway
can still retry. Under an outage the budget runs dry and failures move on (or give up) instead of
multiplying the load on the upstream that is already failing. Moving on to another deployment or model
is failover, not amplification: it is bounded by the configured chain, not by the budget.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ferryman.core.attempts import FALLBACK, GIVE_UP, NEXT, Decision, Failure
from ferryman.core.exchange import Exchange
from ferryman.core.timeouts import FirstTokenTimeoutError
from ferryman.errors import UpstreamStatusError

MAX_ATTEMPTS_PER_DEPLOYMENT = 2  # one retry: most 429s and 5xx are over by the second try
BASE_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 5.0  # also the longest `Retry-After` waited for; a client never waits absurdly
BUDGET_RATIO = 0.2
BUDGET_WINDOW_SECONDS = 10.0
MIN_RETRIES_PER_SECOND = 1.0


@dataclass(frozen=True, slots=True)
class RetryRules:
    """How often and how patiently to retry one deployment; see the module docstring."""

    max_attempts_per_deployment: int = MAX_ATTEMPTS_PER_DEPLOYMENT
    base_delay: float = BASE_DELAY_SECONDS
    max_delay: float = MAX_DELAY_SECONDS


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base · 2^(retry-1))] for the `retry`-th retry (1, 2, …)."""
    ceiling = min(cap, base * 2 ** min(retry - 1, 62))
    return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value: delta-seconds or an HTTP date; None if unreadable."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


class RetryBudget:
    """Retries allowed over a sliding window: at most `ratio` times the first attempts, plus a floor.

    Counts live in one-second buckets, so memory stays bounded whatever the traffic. One budget per
    replica (in process): each replica limits its own amplification, which bounds the fleet's too.
    """

    def __init__(
        self,
        ratio: float = BUDGET_RATIO,
        window_seconds: float = BUDGET_WINDOW_SECONDS,
        min_per_second: float = MIN_RETRIES_PER_SECOND,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.window = window_seconds
        self.floor = min_per_second * window_seconds
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, first attempts, retries], oldest first
        self._requests = 0
        self._retries = 0

    def record_request(self) -> None:
        """A request's first attempt is going out."""
        self._bucket()[1] += 1
        self._requests += 1

    def try_spend(self) -> bool:
        """Take one retry if the window can afford it (and count it); False when it cannot."""
        bucket = self._bucket()
        if self._retries + 1 > self.ratio * self._requests + self.floor:
            return False
        bucket[2] += 1
        self._retries += 1
        return True

    @property
    def counts(self) -> tuple[int, int]:
        """(first attempts, retries) in the current window."""
        self._expire(math.floor(self._clock()))
        return self._requests, self._retries

    def _bucket(self) -> list[int]:
        second = math.floor(self._clock())
        self._expire(second)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    def _expire(self, second: int) -> None:
        oldest = second - math.ceil(self.window) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            _, requests, retries = self._buckets.popleft()
            self._requests -= requests
            self._retries -= retries


class RetryPolicy:
    """The `AttemptPolicy` with retries, backoff and `Retry-After`; the order is in the module docstring.

    The retry budget is the loop's to apply (every policy's retries count against it), so this policy
    only says whether it *wants* a retry and after how long.
    """

    def __init__(
        self,
        rules: RetryRules | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.rules = rules or RetryRules()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography  # nosec B311
        self._clock = clock  # the clock `Exchange.deadline` is on

    def decide(self, exchange: Exchange, failure: Failure) -> Decision:
        """Retry (after a delay), the next deployment, a fallback model, or give up."""
        error = failure.error
        if not error.retryable:
            refused = isinstance(error, UpstreamStatusError) and error.reason is not None
            return FALLBACK if refused else GIVE_UP
        if failure.kind == "malformed" or isinstance(error, FirstTokenTimeoutError):
            return NEXT  # a broken or slow deployment is likely to be so again: try another one
        if failure.tries >= self.rules.max_attempts_per_deployment:
            return NEXT
        delay = self._delay(error, failure.tries)
        if delay is None or not self._fits(exchange, delay):
            return NEXT
        return Decision("retry", delay)

    def _delay(self, error: object, tries: int) -> float | None:
        """The upstream's `Retry-After` if it sent one (None past the cap), else jittered backoff."""
        retry_after = error.retry_after if isinstance(error, UpstreamStatusError) else None
        if retry_after is not None:
            return retry_after if retry_after <= self.rules.max_delay else None
        return backoff_delay(tries, self.rules.base_delay, self.rules.max_delay, self._rng)

    def _fits(self, exchange: Exchange, delay: float) -> bool:
        """Whether the request has time left to wait `delay` and still make an attempt."""
        return exchange.deadline is None or self._clock() + delay < exchange.deadline
