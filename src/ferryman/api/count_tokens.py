"""Token counting: Anthropic's `POST /v1/messages/count_tokens` and Gemini's `:countTokens`.

A count is answered by the deployment the model would be routed to: natively by an upstream with a
counting API (Anthropic's count_tokens, Gemini's countTokens), else offline with `ferryman.tokenizers`
(exact for OpenAI models, erring high for the rest, as the budgets estimate). An upstream count that
fails falls back to the estimate; `x-ferryman-token-count` says which the client got (`upstream` or
`estimated`).

A count runs the same sequence as inference (`api/serve.py`, `Pipeline.count`): the same key and model
rules (401, 403, 404), the request rate limits, the access log, metrics and traces, and a ledger entry,
so it shows in `/v1/usage`. Counting is free at every provider, so the entry costs exactly $0 and
reserves neither budget nor tokens per minute (`Exchange.billed`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol, runtime_checkable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ferryman.api.errors import error_body
from ferryman.api.serve import answer_headers, serve
from ferryman.api.state import AppState
from ferryman.core.canonical import ChatRequest, JSONObject
from ferryman.core.estimate import InputEstimates, estimate_input_tokens
from ferryman.core.exchange import Exchange
from ferryman.core.routing import Target
from ferryman.errors import FerrymanError, ProviderError
from ferryman.wire import anthropic as anthropic_wire
from ferryman.wire import gemini as gemini_wire

log = logging.getLogger("ferryman.api")
COUNT_HEADER = "x-ferryman-token-count"
# count_tokens takes no max_tokens, but the Messages parser requires one; it plays no part in a count.
_PLACEHOLDER_MAX_TOKENS = 1


@runtime_checkable
class CountsTokens(Protocol):
    """An upstream that may count a prompt itself (`HttpProvider.count_tokens`; None: it cannot)."""

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """The upstream's count of `request`'s input tokens, or None."""
        ...


@dataclass(frozen=True, slots=True)
class CountFormat:
    """The `Ingress` of a counting route: how its answer and its errors are rendered."""

    render: Callable[[int], JSONObject]
    render_error: Callable[[FerrymanError], bytes] = error_body

    async def respond(self, state: AppState, exchange: Exchange, body: JSONObject) -> Response:
        """Count through the pipeline; answer with the count and how it was made."""
        assert isinstance(exchange.request, ChatRequest)  # noqa: S101 - the route parsed a chat request
        sources: list[str] = []
        count = partial(_count, state.estimates, exchange.request, sources)
        tokens = await state.pipeline.count(exchange, count)
        payload = orjson.dumps(self.render(tokens))
        if exchange.request_body is not None:
            exchange.response_body = payload.decode()
        state.pipeline.finish(exchange)
        headers = {**answer_headers(exchange), COUNT_HEADER: sources[-1]}
        return Response(payload, media_type="application/json", headers=headers)

    def error_body(self, exc: FerrymanError) -> bytes:
        """This route's error body."""
        return self.render_error(exc)


async def _count(estimates: InputEstimates, chat: ChatRequest, sources: list[str], target: Target) -> int:
    """`target`'s upstream's count when it has one and answers, else the gateway's estimate for its
    model; `sources` learns which."""
    upstream = target.upstream
    if isinstance(upstream, CountsTokens):
        try:
            counted = await upstream.count_tokens(replace(chat, model=target.upstream_model))
        except ProviderError as exc:
            log.warning("deployment %s could not count tokens (%s); estimating", target.deployment, exc)
        else:
            if counted is not None:
                sources.append("upstream")
                return counted
    counter = estimates.counter(target.provider, target.upstream_model)
    # Off the event loop: the first count with an encoding loads it (~0.3 s), and a long prompt encodes
    # for a millisecond or more.
    tokens = await asyncio.to_thread(estimate_input_tokens, chat, counter)
    sources.append("estimated")
    return tokens


# --- Anthropic ------------------------------------------------------------------------------------


def parse_anthropic_count(body: JSONObject) -> ChatRequest:
    """A count_tokens body through the Messages parser, with the `max_tokens` it does not carry."""
    return anthropic_wire.parse_chat_request({**body, "max_tokens": _PLACEHOLDER_MAX_TOKENS, "stream": False})


async def anthropic_count_tokens(request: Request) -> Response:
    """POST /v1/messages/count_tokens (the SDK's beta client adds `?beta=true`, which changes nothing)."""
    return await serve(request, parse_anthropic_count, _ANTHROPIC)


_ANTHROPIC = CountFormat(lambda tokens: {"input_tokens": tokens})


# --- Gemini ---------------------------------------------------------------------------------------


def parse_gemini_count(body: JSONObject, *, model: str) -> ChatRequest:
    """`{contents}` or `{generateContentRequest: {...}}` (which may add a system instruction and
    tools), through the generateContent parser; the model is the path's."""
    nested = body.get("generateContentRequest")
    source = nested if isinstance(nested, dict) and "contents" not in body else body
    return gemini_wire.parse_chat_request(source, model=model, stream=False)


def gemini_count_route(
    render_error: Callable[[FerrymanError], bytes],
) -> Callable[[Request], Awaitable[Response]]:
    """The handler for POST /{version}/models/{model}:countTokens, answering in Google's error shape."""
    ingress = CountFormat(lambda tokens: {"totalTokens": tokens}, render_error)

    async def count_tokens(request: Request) -> Response:
        """POST /v1beta/models/{model}:countTokens."""
        return await serve(request, partial(parse_gemini_count, model=request.path_params["model"]), ingress)

    return count_tokens
