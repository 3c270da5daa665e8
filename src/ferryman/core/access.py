"""The first stage: the caller may use the model it asked for, and the model exists."""

from __future__ import annotations

from ferryman.core.exchange import Exchange
from ferryman.core.pipeline import Answer, Outcome
from ferryman.core.routing import Router
from ferryman.errors import PermissionDeniedError


class ModelAccess:
    """403 (naming the model) unless both the key's and the team's allow-lists admit it; then 404 for a
    model this gateway does not serve. Refusing the forbidden first tells a restricted key nothing
    about which models exist."""

    name = "model_access"

    def __init__(self, router: Router) -> None:
        self._router = router

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Refuse a model the caller may not use, or that does not exist."""
        if not exchange.caller.allows_model(exchange.model):
            raise PermissionDeniedError(
                f"This API key is not allowed to use model {exchange.model!r}.",
                param="model",
                code="model_not_allowed",
            )
        self._router.targets(exchange.model)  # NotFoundError (404) for an unknown model
        return None

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """Nothing to release."""
