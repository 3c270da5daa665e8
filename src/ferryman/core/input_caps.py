"""The second stage: a request carries no more messages, tools, images or tokens than its model allows.

The body-size cap bounds bytes; these bound what a body within it can make the gateway and the upstream
do (a prompt of fifty thousand one-word messages is 400 KB). They run before the rate limits and
budgets, so a refused request costs nobody's quota.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ferryman.core.canonical import ChatRequest, ImagePart
from ferryman.core.exchange import Exchange
from ferryman.core.pipeline import Answer, Outcome
from ferryman.errors import InvalidRequestError


@dataclass(frozen=True, slots=True)
class Caps:
    """One model's caps; None is no cap."""

    max_messages: int | None = None
    max_tools: int | None = None
    max_images: int | None = None
    max_tokens: int | None = None
    max_embedding_inputs: int | None = None


class InputCaps:
    """400 `request_too_large`, naming the field, for a request over its model's caps."""

    name = "input_caps"

    def __init__(self, default: Caps, per_model: Mapping[str, Caps]) -> None:
        self._default = default
        self._per_model = dict(per_model)

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Refuse a request over a cap; count nothing otherwise."""
        caps = self._per_model.get(exchange.model, self._default)
        request = exchange.request
        if isinstance(request, ChatRequest):
            _check("Too many messages", len(request.messages), caps.max_messages, "messages")
            _check("Too many tools", len(request.tools), caps.max_tools, "tools")
            if caps.max_images is not None:
                parts = (part for message in request.messages for part in message.parts)
                _check(
                    "Too many images",
                    sum(isinstance(part, ImagePart) for part in parts),
                    caps.max_images,
                    "messages",
                )
            if request.max_tokens is not None:
                _check("max_tokens too high", request.max_tokens, caps.max_tokens, "max_tokens")
        elif request is not None:
            _check("Too many inputs", len(request.inputs), caps.max_embedding_inputs, "input")
        return None

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """Nothing to release."""


def _check(problem: str, count: int, cap: int | None, param: str) -> None:
    if cap is not None and count > cap:
        raise InvalidRequestError(
            f"{problem}: {count}, over this model's cap of {cap}.",
            param=param,
            code="request_too_large",
        )
