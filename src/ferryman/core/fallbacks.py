"""Fallback models: which other models may answer when the requested one cannot, and in what order.

Each model may name fallbacks in the config (`models[].fallbacks`); a request may name its own instead
(`x-ferryman-fallbacks: a,b` on any ingress format, or `fallbacks` in an OpenAI body), which replace the
configured list (an empty list: no fallback at all). The chain is flat: a fallback model's own
fallbacks are not followed, so chains cannot loop. A model the caller's key may not use is skipped, as
is the requested model itself and any repeat; a model a *request* names that this gateway does not
serve is a 400, while config names are checked when the config loads.

The attempt loop moves to the next model once every deployment of the current one has failed in a way
another might not (or at once, on a refusal only another model might not repeat: see
`UpstreamStatusError.reason`). The reservation the budgets made was for the requested model: a dearer
fallback settles at its own, actual cost.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from ferryman.core.exchange import Exchange
from ferryman.errors import InvalidRequestError

MAX_REQUEST_FALLBACKS = 8  # how many fallback models one request may name


class ModelFallbacks:
    """The configured chains, and the rules that turn a request into its list of models to try."""

    def __init__(self, chains: Mapping[str, Sequence[str]], models: Collection[str]) -> None:
        self._chains = {model: tuple(names) for model, names in chains.items()}
        self._models = frozenset(models)

    def configured(self, model: str) -> tuple[str, ...]:
        """`model`'s fallbacks as the config lists them."""
        return self._chains.get(model, ())

    def chain(self, exchange: Exchange, requested: Sequence[str] | None = None) -> list[str]:
        """The models to try after `exchange.model`, in order; `requested` (the request's own list)
        replaces the configured one."""
        names = self.configured(exchange.model) if requested is None else requested
        chain: list[str] = []
        for name in names:
            if name not in self._models:
                raise InvalidRequestError(
                    f"The fallback model {name!r} does not exist.", param="fallbacks", code="model_not_found"
                )
            if name != exchange.model and name not in chain and exchange.caller.allows_model(name):
                chain.append(name)
        return chain
