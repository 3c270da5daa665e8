"""Per-model and per-request timeouts: one deadline for the whole request, and a first-token limit.

A request's deadline is set once, when the attempt loop starts, from the shorter of the requested
model's `timeout_seconds` and the client's own timeout (`x-ferryman-timeout`, or `timeout` in an OpenAI
body): a client may shorten the operator's limit, never lengthen it (a model without one takes the
client's). It counts from the request's arrival and covers every attempt, every retry's wait and, for a
stream, the stream to its end; each attempt gets what is left. When it passes the client gets a 504
(`request_timeout`) in its own format, and no further attempt is made.

A stream's first batch must also arrive within the model's `first_token_timeout_seconds` (of the
deployment's model being tried, fallback models included): a deployment that is slow to start fails that
attempt as a timeout, and the loop may try the next deployment while the deadline allows.

Deployment-level `timeouts` (connect / read / total, in the config) still bound each HTTP call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ferryman.errors import UpstreamTimeoutError


class DeadlineExceededError(UpstreamTimeoutError):
    """504: the request's own deadline passed; nothing more is tried.

    Not `retryable`: it says the request ran out of time, not that the upstream failed, so it does
    not count against the deployment's health.
    """

    code = "request_timeout"

    @property
    def retryable(self) -> bool:
        """Never: the request has no time left."""
        return False


class FirstTokenTimeoutError(UpstreamTimeoutError):
    """504: a stream's first batch did not arrive within the model's first-token timeout."""

    code = "first_token_timeout"


@dataclass(frozen=True, slots=True)
class ModelTimeout:
    """One model's limits in seconds; None means none."""

    total: float | None = None
    first_token: float | None = None


class ModelTimeouts:
    """Every model's `ModelTimeout`, by client-facing model name."""

    def __init__(self, timeouts: Mapping[str, ModelTimeout] | None = None) -> None:
        self._timeouts = dict(timeouts or {})

    def of(self, model: str) -> ModelTimeout:
        """`model`'s limits (none for a model not configured)."""
        return self._timeouts.get(model, _NONE)

    def budget(self, model: str, requested: float | None) -> float | None:
        """Seconds the request may take: the shorter of the model's limit and the client's."""
        configured = self.of(model).total
        if configured is None or requested is None:
            return configured if requested is None else requested
        return min(configured, requested)


_NONE = ModelTimeout()
