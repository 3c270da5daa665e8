"""Which deployments may serve a model, and in what order to try them.

Each request gets its model's deployments in the order of the model's strategy (`core/strategies.py`:
weighted random by default): the first is the primary, the rest are fallbacks tried when an attempt
fails in a way another upstream might not (see `ProviderError.retryable`). A model with one deployment
skips the strategy altogether.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ferryman.core.pricing import Price
from ferryman.core.strategies import DeploymentLoad, HeadroomBook, Strategy, StrategyName, build_strategy
from ferryman.core.upstream import Upstream
from ferryman.errors import NotFoundError


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment ready to call: its upstream, its labels and its price (None when unpriced);
    `weight` and `priority` are what the `weighted` and `priority` strategies order it by."""

    upstream: Upstream
    provider: str
    deployment: str
    upstream_model: str
    price: Price | None
    weight: int = 1
    priority: int | None = None


class Router:
    """Maps client-facing model names to their deployments, and orders them per request.

    `strategies` names each model's strategy (`weighted` for a model it leaves out); `load` and
    `headroom` are what `least_busy` / `lowest_latency` and `most_headroom` read (fresh ones if not
    given: then those strategies see no traffic but still order).
    """

    def __init__(
        self,
        routes: Mapping[str, Sequence[Target]],
        rng: random.Random | None = None,
        *,
        strategies: Mapping[str, StrategyName] | None = None,
        load: DeploymentLoad | None = None,
        headroom: HeadroomBook | None = None,
    ) -> None:
        self._routes = {name: tuple(targets) for name, targets in routes.items()}
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography  # nosec B311
        self.load = load if load is not None else DeploymentLoad()
        self.headroom = headroom if headroom is not None else HeadroomBook()
        self._names: dict[str, StrategyName] = {
            name: (strategies or {}).get(name, "weighted") for name in self._routes
        }
        self._strategies: dict[str, Strategy] = {
            name: build_strategy(self._names[name], targets, self._rng, self.load, self.headroom)
            for name, targets in self._routes.items()
            if len(targets) > 1
        }
        self._single = {name: targets[0] for name, targets in self._routes.items() if len(targets) == 1}

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

    def strategy(self, model: str) -> StrategyName:
        """The name of `model`'s configured strategy; unknown models are a 404."""
        self.targets(model)
        return self._names[model]

    def choose_order(self, model: str) -> list[Target]:
        """The deployments of `model` in the order to try them; unknown models are a 404."""
        single = self._single.get(model)
        if single is not None:
            return [single]
        strategy = self._strategies.get(model)
        if strategy is None:
            raise NotFoundError(f"The model `{model}` does not exist", param="model")
        return strategy.order()
