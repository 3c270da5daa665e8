"""Which deployments may serve a model, and in what order to try them.

Each request gets its deployments in a weighted-random order: the first is the primary, the rest are
fallbacks tried when an attempt fails in a way another upstream might not (see `ProviderError.retryable`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ferryman.core.pricing import Price
from ferryman.core.upstream import Upstream
from ferryman.errors import NotFoundError


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment ready to call: its upstream, its labels and its price (None when unpriced)."""

    upstream: Upstream
    provider: str
    deployment: str
    upstream_model: str
    price: Price | None
    weight: int = 1


class Router:
    """Maps client-facing model names to their deployments."""

    def __init__(self, routes: Mapping[str, Sequence[Target]], rng: random.Random | None = None) -> None:
        self._routes = {name: tuple(targets) for name, targets in routes.items()}
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography

    @property
    def model_names(self) -> list[str]:
        """Every model name clients may ask for, in config order."""
        return list(self._routes)

    def targets(self, model: str) -> tuple[Target, ...]:
        """All deployments of `model`, in config order; unknown models are a 404."""
        try:
            return self._routes[model]
        except KeyError:
            raise NotFoundError(f"The model `{model}` does not exist", param="model") from None

    def choose_order(self, model: str) -> list[Target]:
        """The deployments of `model` in the order to try them: weighted random, zero-weight last."""
        targets = self.targets(model)
        if len(targets) == 1:
            return [targets[0]]
        weighted = [t for t in targets if t.weight > 0]
        order: list[Target] = []
        while weighted:
            pick = self._rng.choices(weighted, weights=[t.weight for t in weighted])[0]
            order.append(pick)
            weighted.remove(pick)
        order.extend(t for t in targets if t.weight == 0)
        return order
